"""`egress-sidecar virtual-key new | hash`: create a tenant's virtual key, or hash one.

The key is printed once and never stored; only its hash goes into the virtual keys
file. `hash` reads the key from stdin so it never lands in shell history or `ps`.
"""

from __future__ import annotations

import argparse
import sys

from sidecar.credentials.virtual_keys import (
    VirtualKeyError,
    generate_virtual_key,
    hash_virtual_key,
)

EXIT_BAD_KEY = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The action is the last word of the subcommand path (cli._COMMANDS).
    pass


def main(args: argparse.Namespace) -> int:
    if args.virtual_key_command == "new":
        key = generate_virtual_key()
        print(f"key:  {key}")
        print(f"hash: {hash_virtual_key(key)}")
        print("Give the key to the gateway's tenant config; put only the hash in the file.")
        return 0
    try:
        print(hash_virtual_key(sys.stdin.readline()))
    except VirtualKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_KEY
    return 0
