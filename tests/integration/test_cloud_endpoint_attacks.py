"""The sidecar's own calls to STS and Google's token endpoints, through the real process.

They carry what mints a cloud credential (the web identity token, a signed JWT
assertion) and bring the credential back. Before, botocore took the STS endpoint and
proxies from the process environment (`AWS_ENDPOINT_URL_STS`, `HTTPS_PROXY`, ...), and
neither call vetted the addresses it dialled: a proxy variable injected into every
container of a pod sent the web identity token through a stranger's proxy, and an
endpoint resolving to the metadata server or a private address was dialled anyway.
Now: official endpoints (or those named in the sidecar's own settings), vetted and
pinned like any egress, never redirected by environment.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
from botocore.exceptions import ClientError

from tests.integration import test_cloud_credentials
from tests.integration.test_cloud_credentials import (
    GENERATE,
    IRSA,
    VERTEX,
    World,
    bedrock_client,
    invoke,
    vertex_client,
)
from tests.support.cloud_fakes import fake_endpoints

pytestmark = pytest.mark.integration

world = test_cloud_credentials.world  # the fakes, shared with that module's tests


class Trap:
    """A TCP listener that counts who connects (a proxy or endpoint an attacker runs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def trap():
    made = Trap()
    yield made
    made.close()


def _start(start_sidecar, world: World, env: dict[str, str]):
    return start_sidecar(
        world.policy(), extra_args=("--secrets-dir", str(world.secrets.root)), env=env
    )


def _vertex_status(sidecar, world: World) -> int:
    with vertex_client(sidecar) as client:
        answer = client.post(
            f"https://{VERTEX}:{world.vertex.port}{GENERATE}",
            content=json.dumps({"contents": []}),
            headers={"content-type": "application/json"},
        )
    return answer.status_code


def test_proxy_and_sdk_variables_do_not_redirect_sts_or_token_calls(
    start_sidecar, world, trap, tmp_path
):
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\nendpoint_url = {trap.url}\nregion = eu-west-1\n")
    hostile = {
        name: trap.url
        for name in (
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "AWS_ENDPOINT_URL_STS",
            "AWS_ENDPOINT_URL",
        )
    }
    hostile.update(NO_PROXY="", no_proxy="", AWS_CONFIG_FILE=str(config))
    sidecar = _start(
        start_sidecar, world, {**hostile, **fake_endpoints(world.sts.url, world.google.url)}
    )
    calls = len(world.sts.calls)
    assert invoke(bedrock_client(sidecar, world, host=IRSA))["completion"]
    assert world.bedrock.verdicts[-1] is True
    assert len(world.sts.calls) == calls + 1  # the configured STS, directly
    assert _vertex_status(sidecar, world) == 200
    assert trap.connections == 0


def test_sts_endpoint_at_the_metadata_address_is_never_dialled(start_sidecar, world):
    env = fake_endpoints(None, world.google.url)
    # Even with every range allowed: metadata addresses hand out cloud credentials.
    env.update(
        EGRESS_SIDECAR_STS_ENDPOINT="http://169.254.169.254/",
        EGRESS_SIDECAR_CLOUD_ENDPOINT_ADDRESSES="0.0.0.0/0",
    )
    sidecar = _start(start_sidecar, world, env)
    with pytest.raises(ClientError) as refused:
        invoke(bedrock_client(sidecar, world, host=IRSA))
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    decision = sidecar.wait_for_decision(reason="credential_unavailable", timeout=15)
    assert "metadata address" in decision["detail"]


def test_token_endpoints_at_loopback_without_an_allowed_range_are_refused(start_sidecar, world):
    env = fake_endpoints(world.sts.url, world.google.url)
    del env["EGRESS_SIDECAR_CLOUD_ENDPOINT_ADDRESSES"]
    sidecar = _start(start_sidecar, world, env)
    calls, minted = len(world.sts.calls), len(world.google.issued)
    with pytest.raises(ClientError):
        invoke(bedrock_client(sidecar, world, host=IRSA))
    decision = sidecar.wait_for_decision(reason="credential_unavailable", timeout=15)
    assert "loopback address" in decision["detail"]
    assert _vertex_status(sidecar, world) == 503
    assert len(world.sts.calls) == calls and len(world.google.issued) == minted


def test_key_file_token_uri_off_the_official_endpoints_is_refused(start_sidecar, world):
    # The service-account key names the fake token endpoint, which is not listed:
    # its JWT assertion must not be sent there.
    env = fake_endpoints(world.sts.url)
    sidecar = _start(start_sidecar, world, env)
    minted = len(world.google.issued)
    assert _vertex_status(sidecar, world) == 503
    decision = sidecar.wait_for_decision(reason="credential_unavailable", timeout=15)
    assert "not an official STS or Google token endpoint" in decision["detail"]
    assert len(world.google.issued) == minted
