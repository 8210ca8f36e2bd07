#!/usr/bin/env python3
"""images.lock: the one place third-party images are pinned.

    python3 k8s/images.py build-args   # docker build $(python3 k8s/images.py build-args) .
    python3 k8s/images.py refresh      # look the digests up (registry access), rewrite both files
    python3 k8s/images.py check        # images.lock is well formed and the kustomize block matches

Only the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "images.lock"
KUSTOMIZATION = ROOT / "k8s" / "base" / "kustomization.yaml"
UNPINNED = "UNPINNED"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
BEGIN = "# BEGIN images.lock"
END = "# END images.lock"

# lock name -> Dockerfile build argument
BUILD_ARGS = {"python": "PYTHON_IMAGE"}
# lock name -> the symbolic image name the base manifests use
KUSTOMIZE_NAMES = {"litellm": "litellm"}


class LockError(Exception):
    pass


@dataclass(frozen=True)
class Image:
    name: str
    image: str  # registry/repository:tag
    digest: str  # sha256:<64 hex> or UNPINNED

    @property
    def repository(self) -> str:
        last_colon = self.image.rfind(":")
        return self.image[:last_colon] if last_colon > self.image.rfind("/") else self.image

    @property
    def pinned(self) -> bool:
        return self.digest != UNPINNED

    @property
    def reference(self) -> str:
        """What a build or a kubelet pulls: tag and digest (the digest decides)."""
        return f"{self.image}@{self.digest if self.pinned else 'sha256:' + UNPINNED}"


def load(path: Path = LOCK) -> list[Image]:
    images: list[Image] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            raise LockError(f"{path.name}:{number}: expected 'name image digest', got {raw!r}")
        name, image, digest = fields
        if "@" in image or ":" not in image.rsplit("/", 1)[-1]:
            raise LockError(f"{path.name}:{number}: {image!r}: give registry/repository:tag")
        if digest != UNPINNED and not DIGEST.fullmatch(digest):
            raise LockError(
                f"{path.name}:{number}: {digest!r}: expected sha256:<64 hex> "
                f"or {UNPINNED} (never a guessed digest)"
            )
        if any(i.name == name for i in images):
            raise LockError(f"{path.name}:{number}: {name!r} listed twice")
        images.append(Image(name, image, digest))
    missing = (set(BUILD_ARGS) | set(KUSTOMIZE_NAMES)) - {i.name for i in images}
    if missing:
        raise LockError(f"{path.name}: missing {sorted(missing)}")
    return images


def kustomize_block(images: list[Image]) -> str:
    lines = [f"{BEGIN} (written by k8s/images.py refresh; do not edit)", "images:"]
    for image in images:
        if image.name not in KUSTOMIZE_NAMES:
            continue
        lines += [
            f"  - name: {KUSTOMIZE_NAMES[image.name]}  # {image.image}",
            f"    newName: {image.repository}",
            f"    digest: {image.digest if image.pinned else 'sha256:' + UNPINNED}",
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def current_block(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise LockError(f"{KUSTOMIZATION}: no '{BEGIN}' ... '{END}' block")
    return text[start : end + len(END)] + "\n"


def write_kustomize_block(images: list[Image]) -> None:
    text = KUSTOMIZATION.read_text()
    KUSTOMIZATION.write_text(text.replace(current_block(text), kustomize_block(images)))


def look_up(image: str) -> str:
    """The manifest-list (index) digest of IMAGE, so every platform stays pullable."""
    if shutil.which("docker"):
        out = subprocess.run(
            [
                "docker",
                "buildx",
                "imagetools",
                "inspect",
                image,
                "--format",
                "{{json .Manifest.Digest}}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0:
            return str(json.loads(out.stdout))
        sys.stderr.write(f"docker buildx imagetools inspect {image}: {out.stderr.strip()}\n")
    if shutil.which("crane"):
        out = subprocess.run(
            ["crane", "digest", image], capture_output=True, text=True, check=False
        )
        if out.returncode == 0:
            return out.stdout.strip()
        sys.stderr.write(f"crane digest {image}: {out.stderr.strip()}\n")
    raise LockError(f"could not look up {image}: needs docker buildx or crane, and the registry")


def refresh() -> None:
    images = load()
    text = LOCK.read_text()
    for image in images:
        digest = look_up(image.image)
        if not DIGEST.fullmatch(digest):
            raise LockError(f"{image.image}: registry answered {digest!r}, not a sha256 digest")
        text = re.sub(
            rf"(?m)^({re.escape(image.name)}\s+{re.escape(image.image)}\s+)\S+",
            lambda m, d=digest: m.group(1) + d,
            text,
        )
        print(f"{image.name}: {image.image}@{digest}")
    LOCK.write_text(text)
    write_kustomize_block(load())


def build_args() -> list[str]:
    images = {i.name: i for i in load()}
    unpinned = [images[n].image for n in BUILD_ARGS if not images[n].pinned]
    if unpinned:
        raise LockError(
            f"images.lock: {', '.join(unpinned)} not pinned yet; run "
            "'python3 k8s/images.py refresh' (registry access) and commit images.lock"
        )
    return [f"--build-arg={arg}={images[name].reference}" for name, arg in BUILD_ARGS.items()]


def check() -> list[str]:
    """Problems, empty when the lock parses and the kustomize block is what it implies."""
    images = load()
    problems = []
    if current_block(KUSTOMIZATION.read_text()) != kustomize_block(images):
        problems.append(
            f"{KUSTOMIZATION.relative_to(ROOT)}: images block differs from "
            "images.lock; run 'python3 k8s/images.py refresh' or restore it"
        )
    return problems


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) == 2 else ""
    try:
        if command == "build-args":
            print(" ".join(build_args()))
        elif command == "refresh":
            refresh()
        elif command == "check":
            problems = check()
            for problem in problems:
                print(problem, file=sys.stderr)
            unpinned = [i.image for i in load() if not i.pinned]
            if unpinned:
                print(
                    f"images.lock: UNPINNED (builds refused until refreshed): "
                    f"{', '.join(unpinned)}",
                    file=sys.stderr,
                )
            return 1 if problems else 0
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except LockError as exc:
        print(f"images.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
