"""Long-running operations: one mechanism for every job that outlives a request (docs/operations.md).

A request starts an operation (``start``): its durable state goes to the operations table
(storage/operations_store.py) and the request answers 202 with the operation's URL. The
work runs outside any request: a timer-triggered function in Azure, a background task of
the local server, each calling ``run_pending``. A worker takes an operation by writing its
lease conditionally on the operation's ETag, then runs the operation's handler one step at
a time; each step does a bounded batch of real work and returns a checkpoint, which is
saved with the progress and a renewed lease under the same condition. So:

- two workers never run one operation at once: of two claims, one write fails;
- a worker that dies leaves its lease to expire; the next worker resumes from the last
  checkpoint, so a step must be idempotent (redoing the last batch changes nothing);
- ``percentComplete`` is the handler's own count of work done over work to do.

Operation types plug in as ``JobHandler`` s (operations/job_types.py); the statuses and the
JSON shape are the Azure DICOM v2 API's (GET /v2/operations/{id}).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from azure.core.exceptions import AzureError

from dicom_core.services import Services
from dicom_core.storage.operations_store import LeaseLost, lease_free
from dicom_core.storage.records import OperationRecord

logger = logging.getLogger(__name__)

NOT_STARTED = "notStarted"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
FINISHED = (COMPLETED, FAILED)


@dataclass(frozen=True)
class Progress:
    """What one step did: the checkpoint to resume from, work done and to do so far, and whether it is all done."""

    checkpoint: dict | None
    done: int
    total: int
    finished: bool


class OperationFailed(Exception):
    """The operation cannot complete; the message is for the client (the operation's errors)."""


class JobHandler(Protocol):
    """One type of operation: ``step`` does a bounded batch of work; ``completed`` runs once it is all done."""

    async def step(self, services: Services, operation: OperationRecord) -> Progress: ...

    async def completed(self, services: Services, operation: OperationRecord) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """An operation id: 32 hex digits, as Azure's."""
    return uuid.uuid4().hex


async def start(
    services: Services, kind: str, parameters: dict, resources: tuple[str, ...], operation_id: str | None = None
) -> OperationRecord:
    """A new operation of type ``kind``, not started; ``resources`` are paths under /v2 it is about."""
    now = _now()
    record = OperationRecord(operation_id or new_id(), kind, NOT_STARTED, now, now, resources=resources, parameters=parameters)
    await services.operations.create(record)
    return record


def operation_json(record: OperationRecord, base_url: str) -> dict:
    """GET /v2/operations/{id} (Azure DICOM v2): the operation's public state."""
    body = {
        "operationId": record.id,
        "type": record.type,
        "createdTime": record.created.isoformat(),
        "lastUpdatedTime": record.updated.isoformat(),
        "status": record.status,
        "percentComplete": record.percent_complete,
        "resources": [f"{base_url}{resource}" for resource in record.resources],
    }
    if record.status == FAILED:
        body["errors"] = list(record.errors)
    if record.checkpoint and "results" in record.checkpoint:  # a handler's public counts (export's)
        body["results"] = record.checkpoint["results"]
    return body


async def run_pending(
    services: Services, owner: str, handlers: Mapping[str, JobHandler], budget_seconds: float | None = None
) -> int:
    """Run every pending operation this worker can take, until each is done or the budget is spent; how many it ran."""
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    ran = 0
    for operation_id in await services.operations.pending():
        record = await services.operations.get(operation_id)
        if record is None or record.status in FINISHED:
            await services.operations.forget_pending(operation_id)  # left by a crash between the two writes
            continue
        claimed = await claim(services, record, owner)
        if claimed is None:
            continue
        ran += 1
        if claimed.type not in handlers:  # written by a newer version of the service, or by hand
            await _fail(services, claimed, f"operations of type {claimed.type!r} are not known to this service")
            continue
        await _run(services, claimed, handlers[claimed.type], deadline)
        if deadline is not None and time.monotonic() >= deadline:
            break
    return ran


async def claim(services: Services, record: OperationRecord, owner: str) -> OperationRecord | None:
    """Take the operation for ``owner`` under its ETag; None when another worker holds it or got it first."""
    now = _now()
    if not lease_free(record, owner, now):
        return None
    leased = replace(record, status=RUNNING, lease_owner=owner, lease_until=now + _lease(services), updated=now)
    try:
        return await services.operations.save(leased)
    except LeaseLost:
        return None


def _lease(services: Services) -> timedelta:
    return timedelta(seconds=services.settings.jobs.lease_seconds)


async def _run(services: Services, record: OperationRecord, handler: JobHandler, deadline: float | None) -> None:
    """Step the operation until it is done, the lease is lost, storage fails or the budget is spent."""
    store = services.operations
    try:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                await store.save(replace(record, lease_owner=None, lease_until=None))  # let the next run take it at once
                return
            progress = await handler.step(services, record)
            now = _now()
            percent = 100 if progress.finished else min(99, progress.done * 100 // progress.total) if progress.total else 0
            record = await store.save(
                replace(
                    record, checkpoint=progress.checkpoint, done=progress.done, total=progress.total,
                    percent_complete=percent, updated=now, lease_until=now + _lease(services),
                )
            )  # fmt: skip
            if progress.finished:
                await handler.completed(services, record)
                await store.finish(replace(record, status=COMPLETED, updated=_now(), lease_owner=None, lease_until=None))
                return
    except LeaseLost:
        logger.warning("operation %s: another worker took it over; this one stops", record.id)
    except OperationFailed as failure:
        await _fail(services, record, str(failure))
    except AzureError as error:
        # Storage trouble is not the operation's fault: the lease expires and a later run resumes it.
        logger.warning("operation %s paused by a storage failure: %s", record.id, type(error).__name__)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        logger.exception("operation %s failed unexpectedly (incident %s)", record.id, incident)
        await _fail(services, record, f"an unexpected fault stopped the operation (incident {incident})")


async def _fail(services: Services, record: OperationRecord, message: str) -> None:
    failed = replace(record, status=FAILED, errors=(*record.errors, message), updated=_now(), lease_owner=None, lease_until=None)
    try:
        await services.operations.finish(failed)
    except LeaseLost:
        logger.warning("operation %s: another worker took it over before its failure was recorded", record.id)
