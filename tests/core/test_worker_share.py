"""With --workers N, each worker holds 1/N of the pod-wide HTTP/2 stream bound and the
refusal rate, so the pod as a whole holds no more streams and answers no more refusals at
once than configured. Open connections are not split: the workers count them in one
shared table (tests/core/test_shared_connections.py)."""

from __future__ import annotations

import dataclasses

from sidecar.cpus import WorkerCount
from sidecar.limits import Limits
from sidecar.settings import Settings
from sidecar.worker import share_of


def settings(workers: int, **limits: int) -> Settings:
    return Settings(
        policies=(),
        proxy_listen=("127.0.0.1", 0),
        reverse=(),
        admin_listen=("127.0.0.1", 0),
        ca_dir="",
        resolver=None,
        upstream_ca=None,
        reload_interval=1.0,
        alerts_config=None,
        alert_spool_dir=None,
        refusal_rate=20.0,
        limits=dataclasses.replace(Limits(), **limits),
        workers=WorkerCount(workers, f"--workers {workers}"),
    )


def test_two_workers_hold_half_each():
    share = share_of(settings(2))
    # Connection caps stay the pod's: each worker checks them against the shared table.
    assert share.limits.max_connections == Limits().max_connections
    assert share.limits.max_connections_per_source == Limits().max_connections_per_source
    assert share.limits.max_h2_streams_total == 256
    # Byte budgets stay per process: one body must still fit in the worker serving it.
    assert share.limits.max_decoded_bytes == Limits().max_decoded_bytes
    assert share.limits.max_buffered_request_bytes == Limits().max_buffered_request_bytes
    assert share.refusal_rate == 10.0
    assert share.limits.idle_timeout == Limits().idle_timeout  # per connection: unchanged


def test_uneven_split_rounds_up_and_one_worker_keeps_everything():
    assert share_of(settings(3, max_h2_streams_total=10)).limits.max_h2_streams_total == 4
    one = share_of(settings(1))
    assert one.limits == Limits() and one.refusal_rate == 20.0
