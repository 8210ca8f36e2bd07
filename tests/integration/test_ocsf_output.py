"""`--decision-format ocsf`: the real sidecar writes OCSF events that the published schema
accepts: HTTP Activity for requests, Network Activity for a refused CONNECT, DNS Activity
for the DNS listener; reason code and rule in the documented places."""

from __future__ import annotations

import dns.message
import dns.query
import pytest

from tests.conftest import free_port
from tests.core.test_ocsf import valid
from tests.integration.test_explicit_proxy import client, connect_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ocsf_sidecar(start_sidecar):
    return start_sidecar(
        extra_args=("--decision-format", "ocsf", "--dns", f"127.0.0.1:{free_port()}")
    )


def test_decisions_are_ocsf_events_of_the_right_class(ocsf_sidecar, provider):
    with client(ocsf_sidecar) as c:
        ok = c.get(f"https://api.openai.com:{provider.port}/v1/models")
        refused = c.get(f"https://api.openai.com:{provider.port}/admin/keys")
    assert (ok.status_code, refused.status_code) == (200, 403)
    status, _ = connect_status(ocsf_sidecar, "exfil.example.net:443")
    assert status == 403
    host, port = ocsf_sidecar.listener("dns").rsplit(":", 1)
    query = dns.message.make_query("exfil.example.net", "A")
    reply = dns.query.udp(query, host, port=int(port), timeout=5)
    assert reply.rcode() != 0

    allowed = ocsf_sidecar.wait_for_decision(class_uid=4002, status_code="allowed")
    path = ocsf_sidecar.wait_for_decision(class_uid=4002, status_code="path_not_allowed")
    connect = ocsf_sidecar.wait_for_decision(class_uid=4001, status_code="host_not_allowed")
    question = ocsf_sidecar.wait_for_decision(class_uid=4003, status_code="dns_name_not_allowed")
    for event in (allowed, path, connect, question):
        valid(event)
        assert event["metadata"]["product"]["name"] == "egress-sidecar"
    assert allowed["firewall_rule"]["uid"] == "providers.openai"
    assert allowed["http_request"]["url"]["path"] == "/v1/models"
    assert (path["action_id"], path["disposition_id"]) == (2, 2)
    assert path["unmapped"]["egress_sidecar"]["reason"] == "path_not_allowed"
    assert connect["dst_endpoint"] == {"hostname": "exfil.example.net", "port": 443}
    assert question["query"] == {"hostname": "exfil.example.net"}
    # Every line is an event: no JSON line of our own format on stdout.
    assert all("class_uid" in record for record in ocsf_sidecar.decisions)
