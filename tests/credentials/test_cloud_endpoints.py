"""The sidecar's own STS / token endpoint calls: official endpoints, vetted addresses,
no environment redirect (sidecar/credentials/cloud_endpoints.py)."""

from __future__ import annotations

import pytest

from sidecar.credentials.cloud_endpoints import EndpointRules, sts_url, vetted_pool
from sidecar.credentials.cloud_signing import CloudCredentialError

OFFICIAL = EndpointRules()


@pytest.mark.parametrize(
    "url",
    [
        "https://sts.amazonaws.com/",
        "https://sts.eu-west-1.amazonaws.com/",
        "https://sts-fips.us-east-1.amazonaws.com/",
        "https://sts.cn-north-1.amazonaws.com.cn/",
        "https://oauth2.googleapis.com/token",
        "https://sts.googleapis.com/v1/token",
        "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/x:generateAccessToken",
    ],
)
def test_official_endpoints_are_allowed(url):
    assert OFFICIAL.refusal(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://sts.amazonaws.com/",  # cleartext
        "https://sts.amazonaws.com:8443/",
        "https://sts.amazonaws.com.evil.example/",  # look-alike
        "https://evil-sts.eu-west-1.amazonaws.com/",
        "https://oauth2.googleapis.com.evil.example/token",
        "https://token.evil.example/token",  # a key file's token_uri pointing away
        "http://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/",
        "file:///etc/passwd",
    ],
)
def test_other_endpoints_are_refused(url):
    assert OFFICIAL.refusal(url) is not None


def test_region_chooses_only_among_official_endpoints():
    assert sts_url(EndpointRules.from_environ({"AWS_REGION": "eu-west-1"})) == (
        "https://sts.eu-west-1.amazonaws.com/"
    )
    hostile = EndpointRules.from_environ({"AWS_REGION": "evil.example/#"})
    assert sts_url(hostile) == "https://sts.us-east-1.amazonaws.com/"


def test_sdk_and_proxy_variables_are_not_settings():
    rules = EndpointRules.from_environ(
        {
            "AWS_ENDPOINT_URL_STS": "http://attacker.example/",
            "AWS_ENDPOINT_URL": "http://a/",
            "HTTPS_PROXY": "http://attacker.example:3128",
        }
    )
    assert sts_url(rules) == "https://sts.us-east-1.amazonaws.com/"
    assert rules.refusal("http://attacker.example/") is not None


@pytest.mark.parametrize(
    ("answers", "fragment"),
    [
        (["169.254.169.254"], "metadata"),
        (["93.184.216.34", "169.254.169.254"], "metadata"),  # rebinding: any bad answer
        (["::ffff:169.254.169.254"], "metadata"),
        (["10.0.0.5"], "private"),
        (["127.0.0.1"], "loopback"),
        (["100.64.0.1"], "cgnat"),
    ],
)
def test_token_endpoint_name_resolving_to_internal_addresses_is_refused(answers, fragment):
    with pytest.raises(CloudCredentialError, match=fragment):
        OFFICIAL.vet("sts.us-east-1.amazonaws.com", 443, lambda host, port: answers)


def test_allowed_range_admits_a_vpc_endpoint_but_never_metadata():
    rules = EndpointRules.from_environ(
        {"EGRESS_SIDECAR_CLOUD_ENDPOINT_ADDRESSES": "10.0.0.0/8, 169.254.0.0/16"}
    )
    assert rules.vet("vpce.example", 443, lambda h, p: ["10.1.2.3"]) == "10.1.2.3"
    with pytest.raises(CloudCredentialError, match="metadata"):
        rules.vet("vpce.example", 443, lambda h, p: ["169.254.169.254"])


def test_public_answer_is_the_one_dialled():
    assert OFFICIAL.vet("sts.amazonaws.com", 443, lambda h, p: ["52.94.0.1"]) == "52.94.0.1"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"EGRESS_SIDECAR_STS_ENDPOINT": "sts.example"}, "EGRESS_SIDECAR_STS_ENDPOINT"),
        (
            {"EGRESS_SIDECAR_CLOUD_ENDPOINT_ADDRESSES": "ten"},
            "EGRESS_SIDECAR_CLOUD_ENDPOINT_ADDRESSES",
        ),
    ],
)
def test_bad_settings_name_the_variable(environ, fragment):
    with pytest.raises(ValueError, match=fragment):
        EndpointRules.from_environ(environ)


def test_pool_refuses_unlisted_hosts_before_connecting():
    resolved: list[str] = []
    pool = vetted_pool(OFFICIAL, "/dev/null", lambda h, p: resolved.append(h) or [])
    with pytest.raises(CloudCredentialError, match="not an official"):
        pool.request("POST", "https://attacker.example/token", body=b"assertion")
    assert resolved == []
