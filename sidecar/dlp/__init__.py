"""Request DLP (issue 13): secrets in what the gateway sends to a provider.

Pure: no mitmproxy, no network. `detectors` finds secrets in one string, `document`
walks a request body (every JSON string after unescaping, or the body as text) and
redacts, `rules` turns findings into one action per request under the policy's `dlp:`
rules. The thin addon is `sidecar/addons/dlp.py`; docs/dlp.md says what is caught and
what is not.
"""

from sidecar.dlp.kinds import KINDS, Confidence, SecretKind

__all__ = ["KINDS", "Confidence", "SecretKind"]
