"""The one HTTP client configuration that every scenario uses against both servers."""

from __future__ import annotations

import httpx

TIMEOUT = httpx.Timeout(600.0, connect=10.0)


def client() -> httpx.Client:
    """An HTTP/1.1 keep-alive client that asks for uncompressed answers (same bytes from both servers)."""
    return httpx.Client(timeout=TIMEOUT, headers={"Accept-Encoding": "identity"})
