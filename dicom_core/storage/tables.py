"""What every Table Storage adapter shares: its table, created when missing, and the request counter.

``RequestStatistics`` counts what the service asks of storage in one place: request hooks
on each SDK client (storage/connections.py) see every request that goes on the wire,
retries included. Tests and benchmarks read it to assert costs as request and
entity counts, never as times.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.data.tables.aio import TableClient, TableServiceClient

MAX_TRANSACTION_OPERATIONS = 100
"""Operations in one entity-group transaction: Table Storage's limit."""

# Every entity in a Table Storage JSON answer carries its ETag under this key (minimal and
# full metadata alike). A string value holding these bytes would have its quotes escaped,
# so counting them counts entities exactly without parsing the body a second time.
_ENTITY_MARKER = b'"odata.etag":'


@dataclass
class RequestStatistics:
    """Requests sent to the index (Table Storage) and the lake (blobs), and index entities read and written."""

    requests: int = 0
    entities_read: int = 0
    entities_written: int = 0  # inserted, replaced, merged or deleted, each operation of a transaction counted
    lake_requests: int = 0
    lake_bytes_read: int = 0  # the bodies of blob reads: what passed through this process from the lake

    def reset(self) -> None:
        self.requests = 0
        self.entities_read = 0
        self.entities_written = 0
        self.lake_requests = 0
        self.lake_bytes_read = 0


_WRITES = frozenset({"POST", "PUT", "PATCH", "MERGE", "DELETE"})


def _entities_written(request: Any) -> int:
    """The entity operations of one request: each part of a transaction (a nested multipart/mixed), or itself."""
    parts = getattr(request, "multipart_mixed_info", None)
    if parts:
        return sum(_entities_written(part) for part in parts[0])
    return 1 if request.method in _WRITES else 0


def table_hooks(statistics: RequestStatistics) -> dict:
    """SDK client options that count every Table Storage request and the entities its answer holds.

    The SDK calls these hooks for each attempt that goes on the wire, retries included.
    """

    def on_request(request: PipelineRequest) -> None:
        statistics.requests += 1
        statistics.entities_written += _entities_written(request.http_request)

    def on_response(response: PipelineResponse) -> None:
        if response.http_request.method == "GET" and response.http_response.status_code == 200:
            statistics.entities_read += response.http_response.body().count(_ENTITY_MARKER)

    return {"raw_request_hook": on_request, "raw_response_hook": on_response}


def lake_hooks(statistics: RequestStatistics) -> dict:
    """SDK client options that count every blob (and dfs) request and the bytes reads return (their Content-Length)."""

    def on_request(request: PipelineRequest) -> None:
        statistics.lake_requests += 1

    def on_response(response: PipelineResponse) -> None:
        if response.http_request.method == "GET" and response.http_response.status_code in (200, 206):
            statistics.lake_bytes_read += int(response.http_response.headers.get("Content-Length") or 0)

    return {"raw_request_hook": on_request, "raw_response_hook": on_response}


class Table:
    """One table of ``service``; ``prepare`` creates it when it does not exist yet."""

    def __init__(self, service: TableServiceClient, name: str) -> None:
        self.client: TableClient = service.get_table_client(name)

    async def prepare(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            await self.client.create_table()
