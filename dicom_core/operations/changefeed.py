"""Read the change feed: ``/changefeed`` and ``/changefeed/latest`` with the Azure DICOM service v2 semantics.

Parameters (names matched without regard to case, as the Azure service binds them):
``startTime`` inclusive and ``endTime`` exclusive (ISO 8601; no zone means UTC),
``offset`` the number of entries of the window to skip (default 0), ``limit`` at most
how many to return (1-200, default 100), ``includeMetadata`` (default true): the
instance's current DICOM JSON, on entries whose State is ``current``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dicom_core.errors import BadRequest
from dicom_core.services import Services
from dicom_core.storage.changefeed_store import CURRENT, FeedEntry

DEFAULT_LIMIT = 100
MAX_LIMIT = 200


@dataclass(frozen=True)
class FeedQuery:
    start: datetime | None = None
    end: datetime | None = None
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    include_metadata: bool = True

    @classmethod
    def parse(cls, parameters: Mapping[str, str]) -> FeedQuery:
        """Validate the query parameters; BadRequest says which one is wrong and what it takes."""
        values = {name.lower(): value for name, value in parameters.items()}
        query = cls(
            start=_time(values, "starttime"),
            end=_time(values, "endtime"),
            offset=_integer(values, "offset", 0, 0, None),
            limit=_integer(values, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            include_metadata=_boolean(values, "includemetadata"),
        )
        if query.start and query.end and query.start >= query.end:
            raise BadRequest("startTime must be earlier than endTime (startTime is inclusive, endTime exclusive)")
        return query


def _time(values: Mapping[str, str], name: str) -> datetime | None:
    raw = values.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace(" ", "+"))  # a '+' in a URL query decodes to a space
    except ValueError:
        raise BadRequest(f"{name} {raw[:40]!r} is not an ISO 8601 date and time, e.g. 2024-05-10T16:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _integer(values: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = values.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise BadRequest(f"{name} must be a whole number {bounds}, got {raw[:40]!r}")
    return int(raw)


def _boolean(values: Mapping[str, str], name: str) -> bool:
    raw = values.get(name)
    if raw is None:
        return True
    if raw.lower() not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, got {raw[:40]!r}")
    return raw.lower() == "true"


async def read_feed(services: Services, query: FeedQuery) -> list[dict[str, Any]]:
    """The entries of the window, as the JSON array /changefeed returns."""
    entries = await services.changefeed.read(query.start, query.end, query.offset, query.limit)
    return await asyncio.gather(*(_json(services, entry, query.include_metadata) for entry in entries))


async def latest_entry(services: Services, include_metadata: bool) -> dict[str, Any] | None:
    """The newest entry, or None when nothing was ever stored."""
    entry = await services.changefeed.latest()
    return None if entry is None else await _json(services, entry, include_metadata)


async def _json(services: Services, entry: FeedEntry, include_metadata: bool) -> dict[str, Any]:
    key = entry.key
    body: dict[str, Any] = {
        "Sequence": entry.sequence,
        "PartitionName": key.partition,
        "StudyInstanceUid": key.study,
        "SeriesInstanceUid": key.series,
        "SopInstanceUid": key.sop,
        "Action": entry.action,
        "Timestamp": entry.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "State": entry.state,
        "FilePath": entry.path,
    }
    if include_metadata:
        instance = await services.index.get_instance(key) if entry.state == CURRENT else None
        body["Metadata"] = instance.metadata if instance is not None else None
    return body
