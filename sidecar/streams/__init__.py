"""Incremental readers of LLM API responses (issue 14): pure, no mitmproxy."""
