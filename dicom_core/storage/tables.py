"""What every Table Storage adapter shares: its table, created when missing, reads, transactions, the request counter.

``RequestStatistics`` counts what the service asks of storage in one place: request hooks
on each SDK client (storage/connections.py) see every request that goes on the wire,
retries included. Tests and benchmarks read it to assert costs as request and
entity counts, never as times.

``Table.submit`` runs an entity-group transaction. The SDK's ``submit_transaction`` writes
and reads the transaction's multipart body with the ``email`` package, about half a
millisecond of CPU per operation: a third of a store's CPU (measured with py-spy, a STOW
of 50 instances writes some 300 operations), and builds a full request object for every
operation (0.08 ms more each). So the client's own pipeline sends the transaction
(authentication, retries, the hooks above) and the SDK still encodes every entity's
properties with their EDM types; the multipart text, the format of the Table service's
"Performing entity group transactions" reference, and each operation's request line and
headers, the same the SDK's operations send, are written and read here.

``Table.point_read`` and ``Table.pages`` are the SDK's ``get_entity`` and ``query_entities``
requests, sent the same way; their answers are decoded by the SDK's own entity decoder
and error mapping, without its generated deserializer, which walked every property of
every entity first: a third of a point read's CPU, and 3 ms of a query of 50 instance
entities. Every adapter reads through them; only whole-table sweeps (reindex, the checker)
call the SDK's ``list_entities``, which gives the same entities.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.rest import HttpRequest
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode
from azure.data.tables._deserialize import _convert_to_entity
from azure.data.tables._error import _decode_error
from azure.data.tables._serialize import _add_entity_properties, _parameter_filter_substitution
from azure.data.tables.aio import TableClient, TableServiceClient

MAX_TRANSACTION_OPERATIONS = 100
"""Operations in one entity-group transaction: Table Storage's limit."""

# Every entity in a Table Storage JSON answer carries its ETag under this key (minimal and
# full metadata alike). A string value holding these bytes would have its quotes escaped,
# so counting them counts entities exactly without parsing the body a second time.
_ENTITY_MARKER = b'"odata.etag":'
_MINIMAL_METADATA = "application/json;odata=minimalmetadata"  # property types as annotations, and the ETag


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
        client = self.client
        self._endpoint = f"{client.scheme}://{client._primary_hostname}"
        self._table_url = f"{self._endpoint}/{client.table_name}"
        self._read_headers = {"x-ms-version": client.api_version, "DataServiceVersion": "3.0", "Accept": _MINIMAL_METADATA}

    async def prepare(self) -> bool:
        """Create the table when missing; whether this call created it."""
        try:
            await self.client.create_table()
        except ResourceExistsError:
            return False
        return True

    async def point_read(self, partition_key: str, row_key: str, select: list[str] | None = None) -> TableEntity | None:
        """The entity at these keys (only the ``select`` columns), by one point read; None when there is none.

        The request of the SDK's ``get_entity``, sent through the client's pipeline and decoded by
        the SDK's own entity decoder and error mapping, without its generated deserializer, which
        cost a third of the call's CPU. A missing table, like a missing entity, is None.
        """
        url = self._table_url + _entity_path(partition_key, row_key)
        if select:
            url += "?$select=" + quote(",".join(select), safe=",")
        response = await self.client._client.send_request(HttpRequest("GET", url, headers=self._read_headers))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _decode_error(response)
        return _convert_to_entity(json.loads(response.content))

    async def pages(
        self, query: str, parameters: dict[str, Any] | None = None, select: list[str] | None = None, page_size: int = 1000
    ) -> AsyncIterator[list[TableEntity]]:
        """The entities ``query`` matches, a page of up to ``page_size`` at a time, in key order (Query Entities).

        ``@name`` placeholders are filled from ``parameters`` as the SDK's ``query_entities`` fills
        them, and the pages follow the service's continuation headers; like ``point_read``, the
        answers skip the SDK's generated deserializer. A page may be empty yet not the last.
        """
        url = f"{self._table_url}()"
        arguments = {"$top": str(page_size), "$filter": _parameter_filter_substitution(parameters, query)}
        if select:
            arguments["$select"] = ",".join(select)
        while True:
            query_string = "&".join(f"{name}={quote(value, safe='')}" for name, value in arguments.items())
            request = HttpRequest("GET", f"{url}?{query_string}", headers=self._read_headers)
            response = await self.client._client.send_request(request)
            if response.status_code != 200:
                raise _decode_error(response)
            yield [_convert_to_entity(entity) for entity in json.loads(response.content).get("value", [])]
            next_partition = response.headers.get("x-ms-continuation-NextPartitionKey")
            if not next_partition:
                return
            arguments["NextPartitionKey"] = next_partition
            arguments.pop("NextRowKey", None)
            if next_row := response.headers.get("x-ms-continuation-NextRowKey"):
                arguments["NextRowKey"] = next_row

    async def entities(
        self, query: str, parameters: dict[str, Any] | None = None, select: list[str] | None = None, page_size: int = 1000
    ) -> AsyncIterator[TableEntity]:
        """The entities of ``pages``, one at a time, for readers that do not care where a page ends."""
        async for page in self.pages(query, parameters, select, page_size):
            for entity in page:
                yield entity

    async def submit(self, operations: Sequence[tuple]) -> list[dict[str, str]]:
        """Run ``operations`` (the SDK's ``submit_transaction`` tuples) as one transaction: all of them or none.

        Returns each operation's answer headers as ``{"etag": ...}`` (empty for a delete).
        Raises ``TableTransactionError`` as the SDK does, with the failed operation's status,
        error code and ``index``; ``HttpResponseError`` when the whole request is refused.
        """
        client = self.client
        requests = _operation_requests(self._table_url, client.api_version, operations)
        boundary, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
        request = HttpRequest(
            "POST",
            f"{self._endpoint}/$batch",
            headers={
                "x-ms-version": client.api_version,
                "DataServiceVersion": "3.0",
                "MaxDataServiceVersion": "3.0;NetFx",
                "Content-Type": f"multipart/mixed; boundary={boundary}",
                "Accept": "application/json",
            },
            content=_transaction_body(requests, boundary, changeset),
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


@dataclass(frozen=True)
class _OperationRequest:
    """One operation of a transaction as the request it stands for: request line, headers and JSON body."""

    method: str
    url: str
    headers: dict[str, str]
    body: str


_METHODS = {UpdateMode.REPLACE: "PUT", UpdateMode.MERGE: "PATCH"}


def _operation_requests(table_url: str, version: str, operations: Sequence[tuple]) -> list[_OperationRequest]:
    """The request of each operation, as the SDK's ``TableBatchOperations`` builds them (entities of one PartitionKey).

    ``create`` is an Insert Entity, ``upsert`` an Insert Or Replace (or Merge) Entity, ``update`` an
    Update (or Merge) Entity and ``delete`` a Delete Entity, each of the last two on ``If-Match`` its
    ``etag`` with ``MatchConditions.IfNotModified`` and ``*`` otherwise. Inserts ask for no content back:
    the answer needs only their ETags.
    """
    requests = []
    partition_key = None
    for operation in operations:
        kind, entity, options = (*operation, {})[:3]  # the options are optional
        if partition_key is None:
            partition_key = entity["PartitionKey"]
        elif entity["PartitionKey"] != partition_key:
            raise ValueError("the operations of one transaction must have one PartitionKey")
        headers = {"x-ms-version": version, "DataServiceVersion": "3.0", "Accept": "application/json"}
        if kind == "create":
            headers |= {"Content-Type": "application/json", "Prefer": "return-no-content"}
            requests.append(_OperationRequest("POST", table_url, headers, _entity_json(entity)))
            continue
        url = table_url + _entity_path(entity["PartitionKey"], entity["RowKey"])
        if kind in ("update", "delete"):
            condition = options.get("match_condition", MatchConditions.Unconditionally)
            headers["If-Match"] = _if_match(options.get("etag"), condition)
        if kind == "delete":
            requests.append(_OperationRequest("DELETE", url, headers, ""))
        elif kind in ("upsert", "update"):
            headers["Content-Type"] = "application/json"
            method = _METHODS[options.get("mode", UpdateMode.MERGE)]  # the SDK's default for both
            requests.append(_OperationRequest(method, url, headers, _entity_json(entity)))
        else:
            raise ValueError(f"unknown transaction operation {kind!r}")
    return requests


def _entity_json(entity: dict) -> str:
    # The SDK's own encoding of properties: EDM type annotations for binary, 64-bit, GUID and date values.
    return json.dumps(_add_entity_properties(entity))


def _entity_path(partition_key: str, row_key: str) -> str:
    """The URL path of one entity after its table's: each key with quotes doubled (OData), then percent-encoded."""
    return f"(PartitionKey='{_key(partition_key)}',RowKey='{_key(row_key)}')"


def _key(value: str) -> str:
    return quote(value.replace("'", "''"), safe="")


def _if_match(etag: str | None, condition: MatchConditions) -> str:
    if condition == MatchConditions.IfNotModified:
        if not etag:
            raise ValueError("an IfNotModified operation needs its etag")
        return etag if etag.startswith(("W/", '"')) else f'"{etag}"'
    if condition == MatchConditions.Unconditionally and not etag:
        return "*"
    raise ValueError(f"unsupported match condition {condition} (etag {etag!r})")


def _transaction_body(requests: list[_OperationRequest], boundary: str, changeset: str) -> bytes:
    """The multipart/mixed body of a transaction: one changeset holding each request as application/http."""
    lines = [f"--{boundary}", f"Content-Type: multipart/mixed; boundary={changeset}", ""]
    for number, request in enumerate(requests):
        lines += [f"--{changeset}", "Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        lines += [f"Content-ID: {number}", "", f"{request.method} {request.url} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        lines += ["", request.body]
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
