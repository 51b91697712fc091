"""Storage events in, reconcile calls out: what the Functions triggers hand to dicom_core.

Timers too: the health check, and the worker that runs long-running operations.

Files users write or delete in the lake with their own tools (AzCopy, Storage
Explorer, Spark) reach the index through Event Grid: the blob trigger for
created files, an Event Grid trigger for deleted ones. Both come down to one
reconcile of the path, which looks at what is there now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from dicom_core.operations import jobs
from dicom_core.operations.health import HealthStatus, write_health_file
from dicom_core.operations.job_types import HANDLERS
from dicom_core.operations.lookup_move import start_if_needed as start_lookup_move_if_needed
from dicom_core.operations.reconcile import ReconcileResult, reconcile_path
from dicom_core.services import Services

logger = logging.getLogger("dicom_core.events")

_BLOB_SUBJECT = "/blobServices/default/containers/"
# This process as an operation's lease owner: unique per host and process (a second Functions instance differs).
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def path_in_file_system(container_and_path: str, file_system: str) -> str | None:
    """``{file_system}/{path}`` (a blob trigger's name) → ``path``; None for another container."""
    container, _, path = container_and_path.lstrip("/").partition("/")
    return path if container == file_system and path else None


def path_from_event_subject(subject: str, file_system: str) -> str | None:
    """An Event Grid blob event's subject (``/blobServices/default/containers/{c}/blobs/{path}``) → ``path``."""
    if not subject.startswith(_BLOB_SUBJECT):
        return None
    container, _, rest = subject[len(_BLOB_SUBJECT) :].partition("/blobs/")
    return rest if container == file_system and rest else None


async def reconcile_event(services: Services, path: str | None, trigger: str) -> ReconcileResult | None:
    """Reconcile one changed path and log the outcome for Application Insights (no patient data)."""
    if path is None:
        return None
    started = time.perf_counter()
    result = await reconcile_path(services, path)
    key = services.layout.parse_instance_path(path)
    dimensions = {
        "operation": "reconcile",
        "trigger": trigger,
        "outcome": result.outcome,
        "durationMs": round((time.perf_counter() - started) * 1000, 1),
    }
    if key is not None:
        dimensions.update(partition=key.partition, study=key.study, series=key.series, instance=key.sop)
    logger.info("reconcile %s: %s", result.outcome, result.message, extra={"custom_dimensions": dimensions})
    return result


async def check_health(services: Services) -> HealthStatus:
    """Write and read back the health file, and log the outcome."""
    started = time.perf_counter()
    status = await write_health_file(services)
    dimensions = {
        "operation": "health_check",
        "outcome": status.status,
        "durationMs": round((time.perf_counter() - started) * 1000, 1),
    }
    logger.info("health check: %s", status.status, extra={"custom_dimensions": dimensions})
    return status


async def run_operations(services: Services, budget_seconds: float | None = None, owner: str = WORKER_ID) -> int:
    """Run the pending long-running operations this worker can take (docs/operations.md); how many it ran."""
    await start_lookup_move_if_needed(services)
    ran = await jobs.run_pending(services, owner, HANDLERS, budget_seconds)
    if ran:
        logger.info("ran %d operations", ran, extra={"custom_dimensions": {"operation": "operations", "count": ran}})
    return ran


async def run_operations_forever(services: Services) -> None:
    """Look for pending operations every few seconds until cancelled (the local server's stand-in for the timer)."""
    while True:
        try:
            await run_operations(services)
        except Exception:  # a failed round must never end the loop: storage may be back at the next
            logger.exception("running the pending operations failed")
        await asyncio.sleep(services.settings.jobs.poll_seconds)
