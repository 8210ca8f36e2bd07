"""Token usage of one provider response: the one type the response readers produce
(issue 14/15 item 1) and the meters and limits consume.

The response inspection addon stores the final figure of a flow in
`flow.metadata[USAGE_KEY]` before the `response` hook of the addons after it runs
(for a stream: when the stream has ended).
"""

from __future__ import annotations

import dataclasses

USAGE_KEY = "egress_usage"


@dataclasses.dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int
    output_tokens: int
    model: str | None = None  # as the provider reported it; bound it before using as a label

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens
