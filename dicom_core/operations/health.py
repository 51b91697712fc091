"""The health check: write a small file into the lake's healthCheck folder, read it back, record the outcome.

It runs every 30 seconds (a timer trigger in Azure calls ``write_health_file``; the
local server runs it in the background). The outcome is kept in memory and in the
``{prefix}health`` table, so every host answers ``GET /health/check`` the same way.
Files under ``healthCheck/`` are outside the instance layout (storage/layout.py), so
reconcile and reindex never take them for DICOM data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError

from dicom_core.services import Services

logger = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 30
HEALTH_FILE = "health-check.txt"
HEALTHY, DEGRADED = "Healthy", "Degraded"
_CONTENT_PREFIX = b"DICOMweb service health check"
# A recorded outcome older than this is stale (no timer ran): check again before answering.
_STALE_AFTER = timedelta(seconds=3 * CHECK_INTERVAL_SECONDS)


@dataclass(frozen=True)
class HealthStatus:
    status: str
    checked_at: datetime
    lake_last_reached: datetime | None
    cause: str | None = None
    action: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The body of GET /health/check."""
        return {
            "status": self.status,
            "checkedAt": _iso(self.checked_at),
            "lakeLastReached": _iso(self.lake_last_reached),
            **({"cause": self.cause, "action": self.action} if self.status == DEGRADED else {}),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


async def write_health_file(services: Services) -> HealthStatus:
    """Write the health file, read it back and record the outcome; never raises for a storage fault."""
    path = f"{services.layout.health_folder}{HEALTH_FILE}"
    now = datetime.now(UTC)
    content = _CONTENT_PREFIX + f" {now.isoformat()} {uuid.uuid4().hex}\n".encode()
    previous = await _recorded(services)
    try:
        await services.lake.write(path, BytesIO(content), len(content), overwrite=True)
        read_back = await services.lake.read(path)
    except AzureError as error:
        cause, action = _diagnose(services, error)
        last_reached = previous.lake_last_reached if previous else None
        status = HealthStatus(DEGRADED, now, last_reached, cause, action)
    else:
        # Another host may have written in between: any health file read back means the lake works.
        if read_back.startswith(_CONTENT_PREFIX):
            status = HealthStatus(HEALTHY, now, now)
        else:
            cause = "the health file read back is not the one written"
            status = HealthStatus(DEGRADED, now, now, cause, f"check what else writes to {path}")
    services.health.last = asdict(status)
    with contextlib.suppress(AzureError):  # the index is unreachable: this host still answers from memory
        await services.health.save(asdict(status))
    return status


async def run_health_checks(services: Services, interval: float = CHECK_INTERVAL_SECONDS) -> None:
    """Check every ``interval`` seconds until cancelled (the local server's stand-in for the timer trigger)."""
    while True:
        try:
            await write_health_file(services)
        except Exception:  # a failed check must never end the loop: the next one may succeed
            logger.exception("the health check failed unexpectedly")
        await asyncio.sleep(interval)


async def health_status(services: Services) -> HealthStatus:
    """The recorded outcome every host agrees on; checked now when none is recent."""
    recorded = await _recorded(services)
    if recorded is None or datetime.now(UTC) - recorded.checked_at > _STALE_AFTER:
        return await write_health_file(services)
    return recorded


async def _recorded(services: Services) -> HealthStatus | None:
    try:
        stored = await services.health.load()
    except AzureError:
        stored = None
    memory = services.health.last
    candidates = [c for c in (stored, memory) if c]
    if not candidates:
        return None
    newest = max(candidates, key=lambda c: c["checked_at"])
    return HealthStatus(**{name: newest.get(name) for name in HealthStatus.__dataclass_fields__})


def _diagnose(services: Services, error: AzureError) -> tuple[str, str]:
    """What went wrong with the lake, and what the operator should do about it."""
    account, file_system = services.lake.account_name, services.lake.file_system
    where = f"storage account {account}, file system {file_system}"
    if isinstance(error, HttpResponseError):
        code = f" {error.error_code}" if getattr(error, "error_code", None) else ""
        if error.status_code == 403:
            return (
                f"the lake refused to write the health file (403{code})",
                f"give the app's identity the Storage Blob Data Contributor role on {where}; with a connection "
                "string, check that its key or SAS allows writing",
            )
        if error.status_code == 404:
            return (
                f"the lake's file system was not found (404{code})",
                f"create file system {file_system} in storage account {account} or correct DICOM_FILESYSTEM",
            )
        return (
            f"the lake answered {error.status_code}{code} to the health file",
            f"check the status of {where} in the Azure portal (Resource health) and try again",
        )
    return (
        f"the lake could not be reached ({type(error).__name__})",
        f"check the DicomLake setting and the network rules of {where}",
    )
