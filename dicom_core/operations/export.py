"""Export: copy studies, series and instances to a blob container of the customer's (docs/export.md).

POST /v2/export names the identifiers and the destination; ``start_export`` checks the body
and starts an operation of type ``export`` (operations/jobs.py). Its handler, ``ExportJob``,
expands identifiers to instances by key range in the index, in order, and copies at most a
batch of instances (of one identifier or of several) per step, server-side, with bounded concurrency, to
``{operationId}/results/{study}/{series}/{sop}.dcm``. The checkpoint is the identifier and the
last instance copied, with the counts. A step redone after a crash lists what its batch
already put in the destination and does not copy a file again whose size matches.

What cannot be exported is a line of ``{operationId}/errors.log``; a destination that refuses
writes fails the operation with the reason.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from urllib.parse import parse_qs, urlsplit

from dicom_core.dicom.uids import uid_problem
from dicom_core.errors import BadRequest
from dicom_core.operations import jobs
from dicom_core.operations.jobs import OperationFailed, Progress
from dicom_core.services import Services
from dicom_core.storage.export_destination import DestinationRefused, ExportDestination
from dicom_core.storage.lake import CopyFailed
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import InstanceRecord, OperationRecord

EXPORT = "export"
MAX_IDENTIFIERS = 1000
"""Azure's limit of identifiers in one export request."""
_COPIES_IN_FLIGHT = 16
_SOURCE_SAS_LIFETIME = timedelta(hours=1)  # one step's copies finish well within it


def _field(document: object, name: str, where: str) -> object:
    if not isinstance(document, dict):
        raise BadRequest(f"{where} must be a JSON object")
    if name not in document:
        raise BadRequest(f"{where} has no {name!r}")
    return document[name]


def _only(document: dict, names: set[str], where: str) -> None:
    unknown = sorted(set(document) - names)
    if unknown:
        raise BadRequest(f"{where} has an unknown field {unknown[0][:40]!r}")


def _identifier(value: object, position: int) -> list[str]:
    """``study``, ``study/series`` or ``study/series/instance``: its UIDs."""
    if not isinstance(value, str):
        raise BadRequest(f"source.settings.values[{position}] is not a string")
    uids = value.split("/")
    if len(uids) > 3:
        raise BadRequest(f"source.settings.values[{position}] has more than three UIDs: give study[/series[/instance]]")
    for uid in uids:
        problem = uid_problem(uid)
        if problem:
            raise BadRequest(f"source.settings.values[{position}]: {uid[:70]!r} is not a UID: {problem}")
    return uids


def _container_url(value: object) -> str:
    """A container's URL: https://account.blob.core.windows.net/container, or path-style for an emulator."""
    if not isinstance(value, str) or not value:
        raise BadRequest("destination.settings.blobContainerUri must be the URL of a blob container")
    parts = urlsplit(value)
    segments = [segment for segment in parts.path.split("/") if segment]
    host = parts.hostname or ""
    try:
        path_style = host == "localhost" or bool(ip_address(host))  # Azurite names the account in the path
    except ValueError:
        path_style = False
    if parts.scheme not in ("https", "http") or not host or len(segments) != (2 if path_style else 1):
        raise BadRequest(
            "destination.settings.blobContainerUri must be the http(s) URL of a blob container, "
            "such as https://account.blob.core.windows.net/container"
        )
    return value


def export_parameters(body: object, partition: str) -> dict:
    """The operation's parameters from the body of POST /v2/export; 400 saying what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with source and destination")
    _only(body, {"source", "destination"}, "the body")
    source = _field(body, "source", "the body")
    destination = _field(body, "destination", "the body")
    if _field(source, "type", "source") != "identifiers":
        raise BadRequest("source.type must be 'identifiers'")
    values = _field(_field(source, "settings", "source"), "values", "source.settings")
    if not isinstance(values, list) or not values:
        raise BadRequest("source.settings.values must be a non-empty array of identifiers")
    if len(values) > MAX_IDENTIFIERS:
        raise BadRequest(f"source.settings.values has {len(values)} identifiers; at most {MAX_IDENTIFIERS}, as Azure's")
    identifiers = [_identifier(value, n) for n, value in enumerate(values)]
    if _field(destination, "type", "destination") != "azureblob":
        raise BadRequest("destination.type must be 'azureblob'")
    settings = _field(destination, "settings", "destination")
    _only(settings, {"blobContainerUri", "useManagedIdentity"}, "destination.settings")
    url = _container_url(_field(settings, "blobContainerUri", "destination.settings"))
    identity = settings.get("useManagedIdentity", False)
    if not isinstance(identity, bool):
        raise BadRequest("destination.settings.useManagedIdentity must be true or false")
    has_sas = "sig" in parse_qs(urlsplit(url).query)
    if identity == has_sas:
        raise BadRequest(
            "destination.settings: give a SAS in blobContainerUri, or useManagedIdentity true with a URL without one"
        )
    return {"partition": partition, "identifiers": identifiers, "container": url, "identity": identity}


async def start_export(services: Services, body: object, partition: str) -> OperationRecord:
    """Start an export of the identifiers in ``body`` (POST /v2/export); its SAS stays in the operation's parameters."""
    return await jobs.start(services, EXPORT, export_parameters(body, partition), ())


def _destination(services: Services, operation: OperationRecord) -> ExportDestination:
    parameters = operation.parameters
    return ExportDestination(parameters["container"], parameters["identity"], services.settings.lake, services.statistics)


def _error_line(identifier: str, error: str) -> bytes:
    line = {"Timestamp": datetime.now(UTC).isoformat(), "Identifier": identifier, "Error": error}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


class ExportJob:
    """Copy one batch of instances per step, of one identifier or of several."""

    async def step(self, services: Services, operation: OperationRecord) -> Progress:
        identifiers = operation.parameters["identifiers"]
        destination = _destination(services, operation)
        try:
            return await self._step(services, operation, identifiers, destination)
        except DestinationRefused as refused:
            raise OperationFailed(f"the destination {destination.url} cannot be written: {refused}") from None
        finally:
            await destination.close()

    async def _step(
        self, services: Services, operation: OperationRecord, identifiers: list[list[str]], destination: ExportDestination
    ) -> Progress:
        log = f"{operation.id}/errors.log"
        checkpoint = operation.checkpoint
        if checkpoint is None:
            await destination.start_log(log)
            results = {"exported": 0, "skipped": 0, "errorHref": destination.url_of(log)}
            checkpoint = {"next": 0, "after": None, "results": results}
        position, after, results = checkpoint["next"], checkpoint["after"], dict(checkpoint["results"])
        room = services.settings.jobs.batch_size
        groups: list[tuple[list[str], list[InstanceRecord]]] = []
        errors: list[bytes] = []
        # Instances of as many identifiers as fill one batch: copies of small studies run together.
        while room and position < len(identifiers):
            uids = identifiers[position]
            pending = await _instances(services, operation.parameters["partition"], uids)
            if after is not None:
                pending = [record for record in pending if (record.key.series, record.key.sop) > tuple(after)]
            elif not pending:
                errors.append(_error_line("/".join(uids), "not found"))
                results["skipped"] += 1
            batch = pending[:room]
            groups.append((uids, batch))
            room -= len(batch)
            if len(pending) > len(batch):
                after = [batch[-1].key.series, batch[-1].key.sop]
            else:
                position, after = position + 1, None
        slots = asyncio.Semaphore(_COPIES_IN_FLIGHT)  # for the whole step, whatever the number of identifiers
        outcomes = await asyncio.gather(
            *(_copy(services, destination, operation.id, uids, batch, slots) for uids, batch in groups)
        )
        for copied, failures in outcomes:
            errors += failures
            results["exported"] += copied
            results["skipped"] += len(failures)
        if errors:
            await destination.append(log, b"".join(errors))
        checkpoint = {"next": position, "after": after, "results": results}
        return Progress(checkpoint, position, len(identifiers), finished=position == len(identifiers))

    async def completed(self, services: Services, operation: OperationRecord) -> None:
        """Nothing to do: every file is in place when its step ends."""


async def _instances(services: Services, partition: str, uids: list[str]) -> list[InstanceRecord]:
    """The instances an identifier names, in key order (series, then instance)."""
    if len(uids) == 3:
        record = await services.index.get_instance(InstanceKey(partition, *uids))
        return [] if record is None else [record]
    series = uids[1] if len(uids) == 2 else None
    return [record async for record in services.index.instances_of_study(partition, uids[0], series, metadata=False)]


async def _copy(
    services: Services,
    destination: ExportDestination,
    operation_id: str,
    uids: list[str],
    batch: list[InstanceRecord],
    slots: asyncio.Semaphore,
) -> tuple[int, list[bytes]]:
    """Copy ``batch`` (the files not there already); how many are in place, and the error lines of the others."""
    if not batch:
        return 0, []
    names = [f"{operation_id}/results/{r.key.study}/{r.key.series}/{r.key.sop}.dcm" for r in batch]
    # One listing tells what a crashed step already copied; the prefix is the identifier's folder.
    present = await destination.sizes(f"{operation_id}/results/{'/'.join(uids[:2])}/")
    todo = [(name, record) for name, record in zip(names, batch, strict=True) if present.get(name) != record.size]
    sources = await services.lake.readable_urls([record.path for _, record in todo], _SOURCE_SAS_LIFETIME)

    async def copy(name: str, record: InstanceRecord, source: str) -> bytes | None:
        async with slots:
            try:
                await destination.copy(name, source)
            except CopyFailed as failure:
                key = record.key
                return _error_line(f"{key.study}/{key.series}/{key.sop}", str(failure))
        return None

    outcomes = await asyncio.gather(*(copy(name, record, source) for (name, record), source in zip(todo, sources, strict=True)))
    failures = [line for line in outcomes if line is not None]
    return len(batch) - len(failures), failures
