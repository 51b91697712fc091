"""Keep the analytics Delta tables current from the change feed; rebuild them from the index.

A sync reads the feed after the sequence each table recorded, in batches of
``analytics_batch_size`` entries. For every instance, series and study a batch
touches it reads the index as it is now and, in one Delta commit per table,
replaces that key's row with its current one (none when it is gone), recording the
batch's last sequence in the same commit (storage/analytics_tables.py). So creates
and updates upsert, deletes remove, memory is bounded by the batch, and a crash at
any point neither loses nor repeats a change: a table whose commit landed skips the
batch, one whose commit did not applies it.

Reading the index as it is now, not as it was at the entry, is what makes a batch
safe to apply late: every index change is followed by a feed entry for its key, so
the last entry of a key leaves its row as the index has it.

One writer at a time: the sync holds a blob lease on ``analytics/sync.lock``,
renewed after every batch; another host finds it taken and skips its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from dicom_core.operations.describing import describe_file
from dicom_core.services import Services
from dicom_core.storage import analytics_schema as schema
from dicom_core.storage import connections
from dicom_core.storage.analytics_tables import AnalyticsBusy, AnalyticsTables, SyncLease, delta_location
from dicom_core.storage.changefeed_store import FeedEntry
from dicom_core.storage.lake import FileMissing
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import InstanceRecord

logger = logging.getLogger(__name__)

# Compaction rewrites a table of more files than this into few large ones.
COMPACT_ABOVE_FILES = 64
# Vacuum deletes files removed this long ago: Delta's default, so a week-long reader never loses a file.
VACUUM_RETENTION_HOURS = 7 * 24
# The local server compacts and vacuums once every this many syncs (Azure: an hourly timer).
MAINTAIN_EVERY_SYNCS = 60
_INDEX_READS_AT_ONCE = 16

Progress = Callable[[int], None]


@dataclass
class SyncResult:
    """What one sync or rebuild did."""

    entries: int = 0  # change-feed entries (rebuild: instances) applied
    position: int = 0  # the feed sequence the tables are current to
    rows: dict[str, int] = field(default_factory=dict)  # rows written per table
    busy: bool = False  # another host held the lease: nothing done


async def open_tables(services: Services) -> AnalyticsTables:
    """The tables of this service's lake, with storage options from the DicomLake setting."""
    settings = services.settings
    location = await delta_location(
        settings.lake, settings.file_system, services.layout.analytics_folder, hierarchical=services.lake.hierarchical
    )
    return AnalyticsTables(location)


@contextlib.asynccontextmanager
async def _exclusive(services: Services) -> AsyncIterator[SyncLease]:
    blobs = connections.blob_service(services.settings.lake, services.statistics)
    lease = SyncLease(blobs, services.settings.file_system, services.layout.analytics_folder)
    try:
        await lease.acquire()
        try:
            yield lease
        finally:
            await lease.release()
    finally:
        await blobs.close()


async def _bounded(calls: Iterable[Awaitable]) -> list:
    gate = asyncio.Semaphore(_INDEX_READS_AT_ONCE)

    async def one(call: Awaitable):
        async with gate:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


async def _model(services: Services, instance: InstanceRecord) -> dict | None:
    """The instance's DICOM JSON: from the index, else (too large for it) from its file; None when the file is gone."""
    model = instance.metadata
    if model is not None:
        return model
    try:
        file = await services.lake.properties(instance.path)
    except FileMissing:
        return None
    _, described = await describe_file(services, instance.path, file)
    return described.metadata if described is not None else None


def _latest(times: Iterable[datetime | None]) -> datetime | None:
    known = [moment for moment in times if moment is not None]
    return max(known) if known else None


async def _apply(
    services: Services,
    tables: AnalyticsTables,
    changed: dict[InstanceKey, datetime | None],
    pending: dict[str, list[InstanceKey]],
    sequence: int,
) -> dict[str, int]:
    """Replace the rows of the keys ``pending`` names per table with their current ones; record ``sequence``.

    ``changed`` holds each key's change time (its feed entry's; None in a rebuild, where the
    time it was stored stands in). A series or study row takes the latest of its keys'.
    """
    layout = services.layout
    instances = dict(zip(changed, await _bounded(services.index.get_instance(key) for key in changed), strict=True))
    times = {key: changed[key] or (record.stored_at if record else None) for key, record in instances.items()}
    written = {}
    if schema.INSTANCES in pending:
        keys = pending[schema.INSTANCES]
        present = [instances[key] for key in keys if instances[key] is not None]
        models = await _bounded(_model(services, record) for record in present)
        rows = [
            schema.instance_row(record, model, times[record.key])
            for record, model in zip(present, models, strict=True)
            if model is not None
        ]
        await tables.replace(schema.INSTANCES, [schema.instance_key_value(layout, key) for key in keys], rows, sequence)
        written[schema.INSTANCES] = len(rows)
    levels = (
        (schema.SERIES, lambda key: (key.partition, key.study, key.series), services.index.get_series, schema.series_row,
         schema.series_key_value),
        (schema.STUDIES, lambda key: (key.partition, key.study), services.index.get_study, schema.study_row,
         schema.study_key_value),
    )  # fmt: skip
    for table, group_of, read, to_row, key_value in levels:
        if table not in pending:
            continue
        groups = _grouped(pending[table], group_of)
        records = await _bounded(read(*group) for group in groups)
        rows = [
            to_row(record, layout, _latest(times[key] for key in keys))
            for record, keys in zip(records, groups.values(), strict=True)
            if record is not None
        ]
        await tables.replace(table, [key_value(layout, keys[0]) for keys in groups.values()], rows, sequence)
        written[table] = len(rows)
    return written


def _grouped(keys: list[InstanceKey], group_of: Callable[[InstanceKey], tuple]) -> dict[tuple, list[InstanceKey]]:
    groups: dict[tuple, list[InstanceKey]] = {}
    for key in keys:
        groups.setdefault(group_of(key), []).append(key)
    return groups


def _pending(entries: list[FeedEntry], applied: dict[str, int]) -> dict[str, list[InstanceKey]]:
    """Per table, the keys of the entries it has not applied yet (tables that applied them all are left out)."""
    pending = {}
    for name, position in applied.items():
        keys = list(dict.fromkeys(entry.key for entry in entries if entry.sequence > position))
        if keys:
            pending[name] = keys
    return pending


async def sync(
    services: Services, tables: AnalyticsTables | None = None, *, batch_size: int | None = None, progress: Progress | None = None
) -> SyncResult:
    """Apply the change feed to the tables up to its last entry now; ``busy`` when another host is at it."""
    tables = tables or await open_tables(services)
    batch_size = batch_size or services.settings.analytics_batch_size
    try:
        async with _exclusive(services) as lease:
            applied = await tables.applied_sequences()
            last = await services.changefeed.last_sequence()
            result = SyncResult(position=min(applied.values()))
            while result.position < last:
                end = min(result.position + batch_size, last)
                entries = await services.changefeed.entries(result.position + 1, end)
                changed = {entry.key: entry.timestamp for entry in entries}  # the latest entry of each key wins
                written = await _apply(services, tables, changed, _pending(entries, applied), end)
                for name, count in written.items():
                    result.rows[name] = result.rows.get(name, 0) + count
                applied = {name: max(position, end) for name, position in applied.items()}
                result.entries += len(entries)
                result.position = end
                await lease.renew()
                if progress:
                    progress(len(entries))
            return result
    except AnalyticsBusy:
        return SyncResult(busy=True)


async def rebuild(services: Services, *, batch_size: int | None = None, progress: Progress | None = None) -> SyncResult:
    """Recreate the tables from the index, then record the feed position read before it started.

    The tables are emptied and marked as at sequence 0 first, so a rebuild cut short is
    finished by the next sync replaying the whole feed (every instance has a create entry).
    Entries after the recorded position are applied by the next sync, over rows that may
    already show them: applying reads the index as it is, so that changes nothing.
    """
    tables = await open_tables(services)
    batch_size = batch_size or services.settings.analytics_batch_size
    async with _exclusive(services) as lease:
        position = await services.changefeed.last_sequence()
        await tables.reset(0)
        result = SyncResult(position=position)
        batch: list[InstanceKey] = []

        async def flush() -> None:
            every_table = dict.fromkeys(schema.TABLE_NAMES, batch)
            written = await _apply(services, tables, dict.fromkeys(batch), every_table, 0)
            for name, count in written.items():
                result.rows[name] = result.rows.get(name, 0) + count
            result.entries += len(batch)
            await lease.renew()
            if progress:
                progress(len(batch))
            batch.clear()

        async for instance in services.index.all_instances():
            batch.append(instance.key)
            if len(batch) >= batch_size:
                await flush()
        if batch:
            await flush()
        for name in schema.TABLE_NAMES:
            await tables.replace(name, [], [], position)
        return result


async def pending_changes(services: Services) -> int:
    """How many change-feed entries the next sync applies (the total of its progress bar)."""
    applied = await (await open_tables(services)).applied_sequences()
    return max(await services.changefeed.last_sequence() - min(applied.values()), 0)


async def count_instances(services: Services) -> int:
    """How many instances the index holds (the total of a rebuild's progress bar)."""
    return sum([1 async for _ in services.index.all_instances()])


async def maintain(services: Services, *, retention_hours: int = VACUUM_RETENTION_HOURS) -> dict[str, int] | None:
    """Compact tables of many small files and vacuum old versions, under the lease; None when busy."""
    tables = await open_tables(services)
    try:
        async with _exclusive(services):
            return await tables.maintain(max_files=COMPACT_ABOVE_FILES, retention_hours=retention_hours)
    except AnalyticsBusy:
        return None


async def run_analytics_sync(services: Services, interval: float | None = None) -> None:
    """Sync every ``interval`` seconds and maintain now and then, until cancelled (the local server's timer)."""
    interval = interval or services.settings.analytics_interval_seconds
    runs = 0
    while True:
        try:
            result = await sync(services)
            if result.entries:
                logger.info("analytics: applied %d change-feed entries, now at %d", result.entries, result.position)
            runs += 1
            if runs % MAINTAIN_EVERY_SYNCS == 0:
                await maintain(services)
        except Exception:  # a failed sync must never end the loop: the next one resumes where this stopped
            logger.exception("the analytics sync failed")
        await asyncio.sleep(interval)
