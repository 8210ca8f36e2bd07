"""Options of the usage limits (issue 15): where state lives, the optional Redis, and
the admin token file. Each a flag and an EGRESS_SIDECAR_* variable (sidecar/settings.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name

# (flag, env suffix, help)
OPTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "--state-dir",
        "STATE_DIR",
        "directory of the sidecar's state: usage counters and key suspensions "
        "(usage.sqlite3), the admin token (default $XDG_STATE_HOME/egress-sidecar)",
    ),
    (
        "--usage-redis",
        "USAGE_REDIS",
        "redis:// or rediss:// URL of the Redis that every replica's sidecar shares for "
        "usage limits and suspensions (default: none, per pod; docs/usage-limits.md)",
    ),
    (
        "--usage-redis-password-file",
        "USAGE_REDIS_PASSWORD_FILE",
        "file holding the Redis password (never put it in the URL: it shows in ps)",
    ),
    (
        "--admin-token-file",
        "ADMIN_TOKEN_FILE",
        "file holding the token `keys` commands send to the admin listener; created "
        "(mode 0600) if missing (default STATE_DIR/admin-token)",
    ),
)


class UsageSettingsError(ValueError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class UsageSettings:
    state_dir: str
    redis_url: str | None = None
    redis_password_file: str | None = None
    admin_token_file: str = ""

    def redis_password(self) -> str | None:
        if self.redis_password_file is None:
            return None
        try:
            return Path(self.redis_password_file).read_text().strip() or None
        except OSError as exc:
            raise UsageSettingsError(
                f"--usage-redis-password-file {self.redis_password_file}: cannot read: "
                f"{exc.strerror}"
            ) from None


def default_state_dir() -> str:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "egress-sidecar")


def from_values(values: Mapping[str, str | None]) -> UsageSettings:
    state_dir = values.get("--state-dir") or default_state_dir()
    redis_url = values.get("--usage-redis") or None
    if redis_url is not None:
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise UsageSettingsError(
                "--usage-redis: expected a redis://HOST:PORT/DB, rediss://... (TLS) or "
                "unix://PATH URL"
            )
        if "@" in redis_url.split("//", 1)[1].split("/", 1)[0]:
            raise UsageSettingsError(
                "--usage-redis: the URL holds credentials; put the password in "
                "--usage-redis-password-file instead (a URL shows in ps and logs)"
            )
    return UsageSettings(
        state_dir=state_dir,
        redis_url=redis_url,
        redis_password_file=values.get("--usage-redis-password-file") or None,
        admin_token_file=values.get("--admin-token-file")
        or str(Path(state_dir) / ADMIN_TOKEN_FILE),
    )
