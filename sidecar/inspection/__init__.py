"""Request inspection (issue 13): read what the gateway asks a provider to do, as the
provider will read it, and hold it to the provider's relay policy. Pure: no mitmproxy,
no network.

- `body`: bounded decoding and strict JSON;
- `readers`: per-API readers (what makes the provider fetch, call, run or mint);
- `policy`: the relay rules (pure data, read by `sidecar/policy/relay.py`);
- `check`: findings against the rules;
- `inspect`: the one entry point, `inspect_body`.

The thin addon is `sidecar/addons/request_inspection.py`. This package's `__init__`
imports nothing: the policy model imports `inspection.policy`, and must not pull in
the rest (which imports the credential layer, which imports the model).
"""
