"""Alerts: every refusal is logged, counted, grouped and delivered (S8, S9).

Entry point for the proxy: `sidecar.alerts.pipeline.AlertPipeline`. The model,
grouping and config modules are pure and need neither mitmproxy nor a network.
"""

from sidecar.alerts.config import ConfigError
from sidecar.alerts.pipeline import AlertPipeline

__all__ = ["AlertPipeline", "ConfigError"]
