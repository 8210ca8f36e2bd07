"""Bare mitmproxy, trimmed: a `Master` with only the addons a proxy needs.

The ceiling any mitmproxy addon can reach (hook dispatch dominates mitmproxy's cost): the same
built-in addons and safety options egress-sidecar uses (proxyserver, next_layer,
tlsconfig, errorcheck; lazy connections, no raw TCP, no HTTP/3), plus one one-hook
addon that streams responses (an LLM proxy that buffers SSE is not usable, and the
sidecar does the same in its enforcer). No policy, no DNS of its own: the OS resolves.

    python -m bench.trimmed_master --mode regular@127.0.0.1:8080 --confdir DIR \
        --upstream-ca CA.pem [--mode reverse:https://127.0.0.1:8443@127.0.0.1:8081]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from mitmproxy import http, options
from mitmproxy.addons import errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master


class StreamResponses:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.stream = True


async def run(args: argparse.Namespace) -> None:
    opts = options.Options()
    master = Master(opts, event_loop=asyncio.get_running_loop())
    master.addons.add(
        StreamResponses(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(),
    )
    opts.update(
        mode=args.mode,
        confdir=args.confdir,
        connection_strategy="lazy",
        upstream_cert=False,
        rawtcp=False,
        http3=False,
        ssl_verify_upstream_trusted_ca=args.upstream_ca,
        store_streamed_bodies=False,
        body_size_limit="64m",
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", action="append", required=True)
    parser.add_argument("--confdir", required=True)
    parser.add_argument("--upstream-ca", required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
