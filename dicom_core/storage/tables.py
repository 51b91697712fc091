"""What every Table Storage adapter shares: its table, created when missing, transactions, and the request counter.

``RequestStatistics`` counts what the service asks of storage in one place: request hooks
on each SDK client (storage/connections.py) see every request that goes on the wire,
retries included. Tests and benchmarks read it to assert costs as request and
entity counts, never as times.

``Table.submit`` runs an entity-group transaction. The SDK's ``submit_transaction`` writes
and reads the transaction's multipart body with the ``email`` package, about half a
millisecond of CPU per operation: a third of a store's CPU (measured with py-spy, a STOW
of 50 instances writes some 300 operations). So the SDK still builds every operation's
request (entity serialization, keys, conditions) and the client's own pipeline sends the
transaction (authentication, retries, the hooks above); only the multipart text, the
format of the Table service's "Performing entity group transactions" reference, is
written and read here.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.rest import HttpRequest
from azure.data.tables import TableTransactionError
from azure.data.tables._table_batch import TableBatchOperations
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
_PART = b"\r\nContent-Transfer-Encoding: binary\r\n"  # once in the headers of each operation of a transaction


def _entities_written(request: Any) -> int:
    """The entity operations of one request: each part of a transaction (``Table.submit``), or itself."""
    if request.url.endswith("/$batch"):
        return request.content.count(_PART)
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

    async def submit(self, operations: Sequence[tuple]) -> list[dict[str, str]]:
        """Run ``operations`` (the SDK's ``submit_transaction`` tuples) as one transaction: all of them or none.

        Returns each operation's answer headers as ``{"etag": ...}`` (empty for a delete).
        Raises ``TableTransactionError`` as the SDK does, with the failed operation's status,
        error code and ``index``; ``HttpResponseError`` when the whole request is refused.
        """
        client = self.client
        endpoint = f"{client.scheme}://{client._primary_hostname}"
        batch = TableBatchOperations(
            config=client._client._config,
            endpoint=endpoint,
            table_name=client.table_name,
            is_cosmos_endpoint=client._cosmos_endpoint,
        )
        for operation in operations:
            batch.add_operation(operation)
        boundary, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
        request = HttpRequest(
            "POST",
            f"{endpoint}/$batch",
            headers={
                "x-ms-version": client.api_version,
                "DataServiceVersion": "3.0",
                "MaxDataServiceVersion": "3.0;NetFx",
                "Content-Type": f"multipart/mixed; boundary={boundary}",
                "Accept": "application/json",
            },
            content=_transaction_body(batch.requests, boundary, changeset),
        )
        response = await client._client.send_request(request, stream=True)
        body = await response.read()
        if response.status_code != 202:
            raise HttpResponseError(response=response)
        answers = _changeset_answers(body)
        failed = next((answer for answer in answers if not 200 <= answer.status < 300), None)
        if failed is not None:
            raise failed.error()
        if len(answers) != len(operations):
            raise HttpResponseError(f"a transaction of {len(operations)} operations got {len(answers)} answers")
        return [{"etag": answer.headers["etag"]} if "etag" in answer.headers else {} for answer in answers]


def _transaction_body(requests: list[HttpRequest], boundary: str, changeset: str) -> bytes:
    """The multipart/mixed body of a transaction: one changeset holding each request as application/http."""
    lines = [f"--{boundary}", f"Content-Type: multipart/mixed; boundary={changeset}", ""]
    for number, request in enumerate(requests):
        lines += [f"--{changeset}", "Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        lines += [f"Content-ID: {number}", "", f"{request.method} {request.url} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        lines += ["", request.content or ""]
    lines += [f"--{changeset}--", f"--{boundary}--", ""]
    return "\r\n".join(lines).encode()


_STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3}) ?(.*?)\r?$", re.MULTILINE)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class _Answer:
    """The answer to one operation of a transaction: status, headers (lower-case names), body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def error(self) -> TableTransactionError:
        """The SDK's error for this answer; its message starts with the failed operation's index (``3:...``)."""
        code, message = "", self.reason
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            odata = json.loads(self.body)["odata.error"]
            code, message = odata.get("code", ""), odata["message"]["value"]
        error = TableTransactionError(message=f"{message}\nErrorCode:{code}" if code else message)
        error.status_code, error.reason, error.error_code = self.status, self.reason, code
        return error


def _changeset_answers(body: bytes) -> list[_Answer]:
    """Every operation's answer in a transaction's response, in order (one, the failed one, when it failed)."""
    answers = []
    for status in _STATUS_LINE.finditer(body):
        headers_end = _BLANK_LINE.search(body, status.end())
        head = body[status.end() : headers_end.start() if headers_end else len(body)]
        headers = {}
        for line in head.decode("latin-1").splitlines():
            name, separator, value = line.partition(":")
            if separator:
                headers[name.strip().lower()] = value.strip()
        rest = body[headers_end.end() :] if headers_end else b""
        content = rest.split(b"\n--", 1)[0].strip()
        answers.append(_Answer(int(status[1]), status[2].decode("latin-1"), headers, content))
    return answers
