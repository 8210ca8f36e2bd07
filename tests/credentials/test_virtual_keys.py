"""Virtual keys file: strict loading, hashed storage, revocation, reload."""

from __future__ import annotations

import json
import os
import re
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
    assert re.match(r"^vk\.yaml:\d+: ", message) and fragment in message, message
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


# -- the shared YAML reader: lines, duplicates, every problem at once ------------------


def _problems(text: str, source: str = "vk.yaml") -> list[str]:
    with pytest.raises(VirtualKeyError) as info:
        parse_virtual_keys(text, source=source)
    lines = str(info.value).splitlines()
    assert [str(p) for p in info.value.problems] == lines
    return lines


def test_virtual_keys_duplicate_tenant_is_refused_with_line():
    """A second `team-a:` would silently replace the first tenant (and its revocation)."""
    text = doc(
        f'  team-a:\n    revoked: true\n    keys: ["{hash_virtual_key(VK)}"]\n'
        "    providers: [openai]\n"
        f'  team-a:\n    keys: ["{hash_virtual_key(VK2)}"]\n    providers: [openai]\n'
    )
    assert _problems(text) == [
        "vk.yaml:7: tenants.team-a: duplicate key (first at line 3); YAML would silently "
        "keep only the last one: merge them into one"
    ]


def test_virtual_keys_revoked_written_twice_is_refused_not_last_wins():
    """`revoked: true` then `revoked: false`: a plain YAML load un-revokes the tenant."""
    text = doc(
        f'  t:\n    revoked: true\n    keys: ["{hash_virtual_key(VK)}"]\n'
        "    providers: [openai]\n    revoked: false\n"
    )
    (problem,) = _problems(text)
    assert problem.startswith("vk.yaml:7: tenants.t.revoked: duplicate key (first at line 4)")


def test_virtual_keys_duplicate_tenant_in_json_is_refused_with_line(tmp_path: Path):
    path = tmp_path / "vk.json"
    tenant = {"keys": [hash_virtual_key(VK)], "providers": ["openai"]}
    body = json.dumps({"version": 1, "tenants": {"t": tenant}}, indent="\t")
    # json.dumps cannot write a duplicate key: add the second "t" by hand.
    body = body.replace('"tenants": {', '"tenants": {\n\t\t"t": {"keys": [], "providers": []},', 1)
    path.write_text(body)
    with pytest.raises(VirtualKeyError) as info:
        VirtualKeySource(path)
    assert f"{path}:5: tenants.t: duplicate key (first at line 4)" in str(info.value)


def test_virtual_keys_json_syntax_error_has_line(tmp_path: Path):
    path = tmp_path / "vk.json"
    path.write_text('{\n  "version": 1,\n  "tenants": {,}\n}\n')
    with pytest.raises(VirtualKeyError, match=rf"^{re.escape(str(path))}:3: not valid JSON: "):
        VirtualKeySource(path)


def test_virtual_keys_yaml_syntax_error_has_line():
    (problem,) = _problems("version: 1\ntenants:\n  t: [\n")
    assert re.match(r"^vk\.yaml:4: YAML syntax error: ", problem), problem


def test_virtual_keys_every_problem_is_reported_at_once_each_with_its_line():
    text = doc(
        '  a:\n    keys: ["sha256:abc"]\n    providers: [openai]\n'
        f'  b:\n    keys: ["{hash_virtual_key(VK)}"]\n    providers: [openai, openai]\n'
        f'  c:\n    keys: ["{hash_virtual_key(VK)}"]\n    providers: [openai]\n    admin: yes\n'
    )
    assert _problems(text) == [
        "vk.yaml:4: tenants.a.keys[0]: must be 'sha256:' and 64 lower-case hex digits",
        "vk.yaml:8: tenants.b.providers[1]: 'openai' is listed twice (also tenants.b.providers[0])",
        "vk.yaml:10: tenants.c.keys[0]: the same hash is already listed under "
        "tenants.b.keys[0] (line 7)",
        "vk.yaml:12: tenants.c.admin: unknown key 'admin': allowed keys are keys, providers, "
        "revoked",
    ]


def test_virtual_keys_error_never_echoes_a_key_pasted_in_the_wrong_place():
    """A key written where a name, a mapping or a hash goes stays out of the message."""
    for text in (
        doc(f'  {VK}:\n    keys: ["{hash_virtual_key(VK2)}"]\n    providers: [openai]'),
        f"version: 1\ntenants: {VK}\n",
        doc(f'  t:\n    keys: ["{hash_virtual_key(VK2)}"]\n    providers: {VK}'),
        doc(f'  t:\n    keys: ["{hash_virtual_key(VK2)}"]\n    providers: {{openai: {VK}}}'),
        doc(f'  t:\n    keys: [{{hash: "{VK}"}}]\n    providers: [openai]'),
        f"{VK}\n",
    ):
        problems = _problems(text)
        assert problems and all(VK not in p and VK[3:20] not in p for p in problems), problems
