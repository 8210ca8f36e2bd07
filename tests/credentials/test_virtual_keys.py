"""Virtual keys file: strict loading, hashed storage, revocation, reload."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sidecar.credentials.virtual_keys import (
    VirtualKeyError,
    VirtualKeySource,
    generate_virtual_key,
    hash_virtual_key,
    is_virtual_key,
    parse_virtual_keys,
)

VK = generate_virtual_key()
VK2 = generate_virtual_key()


def doc(tenants: str) -> str:
    return "version: 1\ntenants:\n" + tenants


def test_generate_and_hash():
    assert is_virtual_key(VK) and len(VK) >= 40
    digest = hash_virtual_key(VK)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert hash_virtual_key(VK + "\n") == digest  # operators paste with a newline
    assert VK not in digest


@pytest.mark.parametrize(
    "bad", ["", "vk-", "vk-short", "sk-" + "a" * 40, "vk-" + "a" * 20 + "!", "vk-" + "a b" * 12]
)
def test_hash_refuses_weak_or_malformed_keys(bad: str):
    with pytest.raises(VirtualKeyError) as info:
        hash_virtual_key(bad)
    assert len(bad) < 5 or bad not in str(info.value)


def test_lookup_known_revoked_unknown():
    vks = parse_virtual_keys(
        doc(f"""
  team-a:
    keys: ["{hash_virtual_key(VK)}", {{hash: "{hash_virtual_key(VK2)}", revoked: true}}]
    providers: [openai, anthropic]
""")
    )
    tenant = vks.lookup(VK)
    assert tenant is not None and tenant.name == "team-a"
    assert tenant.may_use("openai") and not tenant.may_use("gemini")
    assert tenant.secret_for("openai", "openai") == "openai"
    assert vks.lookup(VK2) is None
    assert "revoked" in vks.explain(VK2)[1]
    assert vks.lookup(generate_virtual_key()) is None
    assert vks.explain("garbage\x00")[1] == "unknown virtual key"
    assert VK not in repr(vks) and hash_virtual_key(VK) not in repr(vks)


def test_revoked_virtual_key_tenant_level():
    vks = parse_virtual_keys(
        doc(f"""
  team-gone:
    revoked: true
    keys: ["{hash_virtual_key(VK)}"]
    providers: {{openai: {{secret: openai-gone}}}}
""")
    )
    assert vks.lookup(VK) is None
    assert "revoked" in vks.explain(VK)[1]


def test_json_file(tmp_path: Path):
    path = tmp_path / "vk.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "tenants": {
                    "t": {
                        "keys": [hash_virtual_key(VK)],
                        "providers": {"openai": {"secret": "openai-t"}},
                    }
                },
            }
        )
    )
    vks = VirtualKeySource(path).current
    assert vks.lookup(VK).secret_for("openai", "openai") == "openai-t"  # type: ignore[union-attr]


ERRORS = [
    ("not_a_mapping", "- 1", "mapping"),
    ("bad_version", "version: 2\ntenants: {}", "version"),
    ("unknown_top_key", "version: 1\ntenants: {}\nextra: 1", "unknown key 'extra'"),
    (
        "plain_key_stored",
        doc(f'  t:\n    keys: ["{VK}"]\n    providers: [openai]'),
        "store only its hash",
    ),
    ("bad_hash", doc('  t:\n    keys: ["sha256:abc"]\n    providers: [openai]'), "64"),
    (
        "unknown_tenant_key",
        doc(
            f'  t:\n    keys: ["{hash_virtual_key(VK)}"]\n    providers: [openai]\n    admin: true'
        ),
        "unknown key 'admin'",
    ),
    (
        "no_providers",
        doc(f'  t:\n    keys: ["{hash_virtual_key(VK)}"]\n    providers: []'),
        "at least one provider",
    ),
    ("no_keys", doc("  t:\n    keys: []\n    providers: [openai]"), "non-empty"),
    (
        "bad_tenant_name",
        doc(f'  "Team A":\n    keys: ["{hash_virtual_key(VK)}"]\n    providers: [openai]'),
        "tenant names",
    ),
    (
        "revoked_not_bool",
        doc(
            f'  t:\n    keys: ["{hash_virtual_key(VK)}"]\n'
            '    providers: [openai]\n    revoked: "yes"'
        ),
        "true or false",
    ),
    (
        "duplicate_hash",
        doc(
            f'  a:\n    keys: ["{hash_virtual_key(VK)}"]\n    providers: [openai]\n'
            f'  b:\n    keys: ["{hash_virtual_key(VK)}"]\n    providers: [openai]'
        ),
        "already listed under tenants.a.keys[0]",
    ),
    (
        "bad_secret_name",
        doc(
            f'  t:\n    keys: ["{hash_virtual_key(VK)}"]\n'
            '    providers: {openai: {secret: "../etc"}}'
        ),
        "secret name",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_strict_loading(text: str, fragment: str):
    with pytest.raises(VirtualKeyError) as info:
        parse_virtual_keys(text, source="vk.yaml")
    message = str(info.value)
    assert message.startswith("vk.yaml: ") and fragment in message
    assert VK not in message  # even a wrongly stored plain key is not echoed


def test_source_reload_keeps_last_good(tmp_path: Path):
    path = tmp_path / "vk.yaml"
    path.write_text(doc(f'  t:\n    keys: ["{hash_virtual_key(VK)}"]\n    providers: [openai]'))
    source = VirtualKeySource(path)
    assert source.refresh() is False
    new = tmp_path / "new.yaml"
    new.write_text(doc(f'  t:\n    keys: ["{hash_virtual_key(VK2)}"]\n    providers: [openai]'))
    os.replace(new, path)
    assert source.refresh() is True
    assert source.current.lookup(VK2) is not None and source.current.lookup(VK) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntenants: [")
    os.replace(bad, path)
    with pytest.raises(VirtualKeyError):
        source.refresh()
    assert source.current.lookup(VK2) is not None  # last good version stays

