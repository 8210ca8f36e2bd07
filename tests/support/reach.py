"""Let an unprivileged test UID reach the interpreter and the checkout, host unchanged.

The namespace tests run the sidecar as UID 1337. It needs the venv's interpreter (a
symlink into e.g. /root/.pyenv) and the checkout (the venv, the editable `sidecar`
package, the bundled policies). Either may sit below a directory that UID 1337 cannot
traverse: /root is 0700, and a clone may live in a 0700 folder of its owner.

Instead of changing permissions on the host, the command is started in a private mount
namespace (`unshare --mount --propagation private`, as root, before dropping to the
UID). There, each untraversable directory on the way is covered by an empty tmpfs
holding only bind mounts of the entries on the way (the original directory is first
bind-mounted aside, into `stage`, a root-only directory). Parents are covered before
children, so a 0700 folder inside a 0700 folder works too. The mounts exist only in
that namespace and vanish with the process: nothing to restore, even if the test
process is killed. Nothing is copied and no file mode changes.

Limitation: the targets themselves are not opened up, only the directories above them:
a target directory that is itself 0700 stays closed. To open a 0700 checkout, pass its
entries as the targets, not the checkout (tests/transparent/test_pod_netns.py does).
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterable
from pathlib import Path


def blocked_for_others(directory: Path) -> bool:
    """Can a UID that is neither owner nor group not traverse `directory`?"""
    return not os.stat(directory).st_mode & stat.S_IXOTH


def covers(targets: Iterable[Path]) -> dict[Path, set[str]]:
    """The untraversable directories above `targets`, each with the entries to keep.

    Keys are ordered parents first (by depth), as the mounts must be made.
    """
    needed: dict[Path, set[str]] = {}
    for target in targets:
        chain = [*reversed(target.parents), target]
        for directory, child in itertools.pairwise(chain):
            if directory != Path("/") and blocked_for_others(directory):
                needed.setdefault(directory, set()).add(child.name)
    return dict(sorted(needed.items(), key=lambda item: len(item[0].parts)))


# $1: stage directory; then groups of: directory, number of entries, entries...; "--"; argv.
_SCRIPT = r"""
set -e
stage=$1; shift; n=0
mkdir -p -m 0700 "$stage"
while [ "$1" != "--" ]; do
  dir=$1 count=$2; shift 2
  n=$((n + 1)); aside="$stage/$n"; mkdir -p -m 0700 "$aside"
  mount --bind "$dir" "$aside"
  mount -t tmpfs -o mode=0755,size=1m egress-test "$dir"
  while [ "$count" -gt 0 ]; do
    if [ -d "$aside/$1" ]; then mkdir "$dir/$1"; else : > "$dir/$1"; fi
    mount --bind "$aside/$1" "$dir/$1"
    count=$((count - 1)); shift
  done
done
shift
exec "$@"
"""


def reach_prefix(targets: Iterable[Path], stage: Path) -> list[str]:
    """A command prefix (run as root) under which a later `setpriv` UID reaches `targets`.

    Empty when no directory above the targets blocks other UIDs. `stage` must be a
    path root may create (a directory of the test's own temporary folder).
    """
    plan = covers(Path(os.path.realpath(t)) for t in targets)
    if not plan:
        return []
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SCRIPT, "sh",
            str(stage)]  # fmt: skip
    for directory, entries in plan.items():
        argv += [str(directory), str(len(entries)), *sorted(entries)]
    return [*argv, "--"]
