"""A local trial of egress-sidecar in front of LiteLLM's proxy server: no cluster, no
provider account. `bash examples/litellm-local/run.sh` (after `bash scripts/install.sh`).

It starts, all on 127.0.0.1 and on free ports:
  1. a fake provider speaking OpenAI's API over TLS (as api.openai.com, its certificate
     from a throw-away CA) and a tiny DNS server that points api.openai.com at it;
  2. egress-sidecar with a policy for that provider, a key file it injects, an explicit
     proxy listener and a reverse listener;
  3. LiteLLM's proxy server (`litellm --config`) with a dummy key, configured with the
     explicit-mode recipe of the README (HTTPS_PROXY, NO_PROXY, SSL_CERT_FILE bundle,
     LITELLM_LOCAL_MODEL_COST_MAP) and one model through the reverse listener;
  4. a client (the openai SDK) calling LiteLLM: allowed models, and models whose
     requests the policy refuses.
It prints what the provider received (the injected key, masked) and what was refused,
checks it, stops everything and removes its files. Exit 0 when every check holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import certifi
import dns.message
import dns.rcode
import dns.rrset
import openai
import trustme
from aiohttp import web

VENV_BIN = Path(sys.executable).parent
INJECTED_KEY = "sk-proj-" + "LocalTrial0" * 5  # what the sidecar holds (fake, local only)
DUMMY_KEY = "sk-dummy-litellm"  # what LiteLLM holds
WITHOUT = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--without=")]
DEADLINE = time.monotonic() + float(os.environ.get("TRIAL_TIMEOUT", "240"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mask(key: str) -> str:
    return f"{key[:8]}...{key[-4:]}" if len(key) > 12 else "***"


# --- 1. the outside world: a fake provider and a DNS server ----------------------------


class Outside:
    def __init__(self, ca: trustme.CA) -> None:
        self.cert = ca.issue_cert("api.openai.com")
        self.received: list[dict[str, str]] = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.provider_port = self._run(self._start_provider())
        self.dns_port = self._run(self._start_dns())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start_provider(self) -> int:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            auth = request.headers.get("authorization", "").removeprefix("Bearer ")
            self.received.append({"method": request.method, "path": request.path, "key": auth})
            if request.path.endswith("/models"):
                return web.json_response(
                    {
                        "object": "list",
                        "data": [
                            {"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "fake"}
                        ],
                    }
                )
            payload = json.loads(body or b"{}")
            if payload.get("stream"):
                response = web.StreamResponse(headers={"content-type": "text/event-stream"})
                await response.prepare(request)
                for word in ("hello ", "from ", "the ", "fake ", "provider"):
                    chunk = {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": "gpt-fake",
                        "choices": [
                            {"index": 0, "delta": {"content": word}, "finish_reason": None}
                        ],
                    }
                    await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await response.write(b"data: [DONE]\n\n")
                return response
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "gpt-fake",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "hello from fake"},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
                }
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        return int(runner.addresses[0][1])

    async def _start_dns(self) -> int:
        class Answer(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                query = dns.message.from_wire(data)
                reply = dns.message.make_response(query)
                question = query.question[0]
                name = question.name.to_text().rstrip(".").lower()
                if name != "api.openai.com":
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                elif question.rdtype == 1:  # A
                    reply.answer.append(
                        dns.rrset.from_text(question.name, 5, "IN", "A", "127.0.0.1")
                    )
                self.transport.sendto(reply.to_wire(), addr)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Answer, local_addr=("127.0.0.1", 0)
        )
        return int(transport.get_extra_info("sockname")[1])


# --- processes --------------------------------------------------------------------------


class Process:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_for(what: str, check: Any, processes: list[Process]) -> Any:
    while time.monotonic() < DEADLINE:
        result = check()
        if result:
            return result
        for p in processes:
            if p.proc.poll() is not None:
                raise SystemExit(
                    f"{p.name} exited {p.proc.returncode} while waiting for "
                    f"{what}:\n{p.log.read_text()[-3000:]}"
                )
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="egress-sidecar-trial-"))
    processes: list[Process] = []
    try:
        return trial(work, processes)
    finally:
        for p in reversed(processes):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def trial(work: Path, processes: list[Process]) -> int:
    ca = trustme.CA()
    provider_ca = work / "provider-ca.pem"
    ca.cert_pem.write_to_path(str(provider_ca))
    outside = Outside(ca)
    port = outside.provider_port

    # --- 2. the sidecar ---
    (work / "keys").mkdir(mode=0o700)
    (work / "keys" / "openai").write_text(INJECTED_KEY)
    (work / "policy.yaml").write_text(
        "version: 1\nproviders:\n  openai:\n    hosts: [api.openai.com]\n"
        f"    ports: [{port}]\n    paths: [/v1/*]\n    methods: [GET, POST]\n"
        "    addresses: [127.0.0.0/8]   # the fake provider lives on loopback\n"
        '    credential: {header: authorization, format: "Bearer {secret}", secret: openai}\n'
    )
    proxy_port, reverse_port, litellm_port = free_port(), free_port(), free_port()
    sidecar_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    sidecar = Process(
        "egress-sidecar",
        [
            str(VENV_BIN / "egress-sidecar"),
            "run",
            "--policy",
            str(work / "policy.yaml"),
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--admin",
            "127.0.0.1:0",
            "--reverse",
            f"openai@127.0.0.1:{reverse_port}",
            "--ca-dir",
            str(work / "ca"),
            "--secrets-dir",
            str(work / "keys"),
            "--resolver",
            f"127.0.0.1:{outside.dns_port}",
            "--upstream-ca",
            str(provider_ca),
            # No --workers: `auto`, one process on a machine without a CPU limit (the
            # sidecar's `workers` event in sidecar.log says how many and why).
        ],
        sidecar_env,
        work / "sidecar.log",
    )
    processes.append(sidecar)
    wait_for("the sidecar", lambda: '"listening"' in sidecar.log.read_text(), processes)

    # --- 3. LiteLLM's proxy server, explicit-mode recipe ---
    bundle = work / "ca-bundle.pem"  # public roots + the sidecar CA: SSL_CERT_FILE
    bundle.write_bytes(
        Path(certifi.where()).read_bytes()
        + b"\n"
        + (work / "ca" / "mitmproxy-ca-cert.pem").read_bytes()
    )

    def model(name: str, api_base: str) -> str:
        return (
            f"  - model_name: {name}\n    litellm_params:\n      model: openai/gpt-fake\n"
            f"      api_base: {api_base}\n      api_key: {DUMMY_KEY}\n"
        )

    (work / "litellm.yaml").write_text(
        # LiteLLM's router retries a 403 and 5xx on the same deployment (num_retries,
        # default 2): each retry is refused and logged again. 0: one refusal, one line.
        "router_settings:\n  num_retries: 0\n"
        "model_list:\n"
        + model("via-explicit-proxy", f"https://api.openai.com:{port}/v1")
        + model("via-reverse-listener", f"http://127.0.0.1:{reverse_port}/v1")
        + model("refused-path", f"https://api.openai.com:{port}/v2")
        + model("refused-port", f"https://api.openai.com:{free_port()}/v1")
    )
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    litellm_env = {
        **sidecar_env,
        "HTTPS_PROXY": proxy_url,
        "HTTP_PROXY": proxy_url,
        "NO_PROXY": "127.0.0.1,localhost",  # the reverse listener is reached directly
        "SSL_CERT_FILE": str(bundle),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it fetches the map from GitHub
    }
    for name in WITHOUT:  # --without VAR: see what that part of the recipe is for
        litellm_env.pop(name, None)
    if "SSL_CERT_FILE" in WITHOUT:
        litellm_env["REQUESTS_CA_BUNDLE"] = str(bundle)
    litellm = Process(
        "litellm",
        [
            str(VENV_BIN / "litellm"),
            "--config",
            str(work / "litellm.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(litellm_port),
        ],
        litellm_env,
        work / "litellm.log",
    )
    processes.append(litellm)

    def litellm_ready() -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", litellm_port), timeout=1) as s,
        ):
            s.sendall(b"GET /health/liveliness HTTP/1.0\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/1.1 200")
        return False

    wait_for("LiteLLM's proxy server", litellm_ready, processes)

    # --- 4. a client calling LiteLLM ---
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{litellm_port}", api_key="anything", max_retries=2, timeout=60
    )
    failures: list[str] = []
    print("== the client, through LiteLLM")
    for name in ("via-explicit-proxy", "via-reverse-listener"):
        try:
            stream = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except openai.APIError as exc:
            text = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"  {name}: {text!r}")
        if text != "hello from the fake provider":
            failures.append(f"{name}: unexpected answer {text!r}")
    refused: dict[str, str] = {}
    for name, reason in (
        ("refused-path", "path_not_allowed"),
        ("refused-port", "port_not_allowed"),
    ):
        try:
            client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
            failures.append(f"{name}: was not refused")
        except openai.APIStatusError as exc:
            print(f"  {name}: {exc.status_code} {type(exc).__name__}: {str(exc)[:160]}")
            refused[name] = reason
            if reason not in str(exc) or exc.status_code != 403:
                failures.append(f"{name}: the caller does not see {reason}: {exc}")

    time.sleep(2)  # any retry would have arrived by now
    print("\n== what the provider received")
    for got in outside.received:
        print(f"  {got['method']} {got['path']}  key {mask(got['key'])}")
        if got["key"] != INJECTED_KEY:
            failures.append(f"the provider got a key that is not the injected one: {got}")
    if not any(g["path"] == "/v1/chat/completions" for g in outside.received):
        failures.append("no chat completion reached the provider")

    print("\n== what the sidecar refused (decision lines)")
    decisions = [json.loads(line) for line in sidecar.lines if line.startswith("{")]
    blocks = [d for d in decisions if d["decision"] != "allow"]
    for d in blocks:
        print(
            f"  {d['decision']} {d['reason']}: {d['method']} {d['host']}:{d['port']}"
            f"{d['path'] or ''}"
        )
    for name, reason in refused.items():
        count = sum(1 for d in blocks if d["reason"] == reason)
        if count != 1:
            failures.append(f"{name}: {count} decision lines for one refused call (retried?)")
    text = sidecar.log.read_text() + "".join(sidecar.lines)
    if INJECTED_KEY in text or INJECTED_KEY in (work / "litellm.log").read_text():
        failures.append("the injected key appears in a log")

    print()
    if WITHOUT:
        print("LiteLLM's log, last lines:\n" + (work / "litellm.log").read_text()[-2500:])
    for failure in failures:
        print(f"FAIL: {failure}")
    print("OK: the trial held" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
