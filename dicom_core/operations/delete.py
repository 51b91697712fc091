"""DELETE of a study, a series or an instance (the Azure DICOM service v2 delete API).

The lake is the source of truth, so the file goes first: once it is gone, the
instance is deleted, and everything after is bookkeeping that can be repeated.
The order for the instances in scope (the index's entries and the lake's files,
so that orphan files go too):

1. claim a delete-journal row per instance (storage/delete_journal.py);
2. delete the files;
3. announce the deletes in the change feed (idempotent: the feed remembers them);
4. take them off the series and study counts, once per job (the entities remember
   the jobs applied), removing a series or study left empty and its modality;
5. delete the instance entities;
6. release the journal rows.

An outage at any step leaves journal rows; the next delete in that study, a
reconcile of one of its paths or a reindex runs the steps again for them
(``finish_interrupted``). Deleting the file first also means an interrupted delete
never leaves a file without an entry (which a reconcile would index again, bringing
the instance back); it can leave an entry without a file only until the journal is
replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from dicom_core.errors import NotFound
from dicom_core.services import Services
from dicom_core.storage.changefeed_store import Change
from dicom_core.storage.delete_journal import JournalRow
from dicom_core.storage.lake import FileMissing
from dicom_core.storage.layout import InstanceKey, Scope

# A journal row older than this belongs to a delete that was interrupted (a running
# delete takes seconds); younger rows are left to the delete that is running.
INTERRUPTED_AFTER = timedelta(seconds=60)
_FILE_CONCURRENCY = 16


async def delete(services: Services, scope: Scope, *, keep_files: bool = False) -> int:
    """Delete everything in ``scope``; the number of instances removed. NotFound when there is nothing.

    ``keep_files`` removes only the index entries (reconcile: a file at a contract path
    that is not a valid instance of that path is reported, never deleted).
    """
    await finish_interrupted(services, scope.partition, scope.study)
    targets = await _instances_in(services, scope)
    if not targets:
        raise NotFound(f"{scope.describe()} is not stored in partition {scope.partition}")
    job = uuid.uuid4().hex
    now = datetime.now(UTC)
    # A row without a path keeps its file, also when an interrupted delete is replayed.
    rows = [JournalRow(key, job, indexed, "" if keep_files else path, now) for key, (path, indexed) in targets.items()]
    await _run(services, await services.deletes.claim(rows))
    return len(targets)


async def finish_interrupted(services: Services, partition: str, study: str) -> int:
    """Replay the journal rows of ``study`` left by interrupted deletes; the number of instances finished."""
    cutoff = datetime.now(UTC) - INTERRUPTED_AFTER
    rows = [row async for row in services.deletes.rows_of_study(partition, study) if row.created <= cutoff]
    await _run(services, rows)
    return len(rows)


async def finish_all_interrupted(services: Services) -> int:
    """Replay every interrupted delete (reindex)."""
    cutoff = datetime.now(UTC) - INTERRUPTED_AFTER
    rows = [row async for row in services.deletes.all_rows() if row.created <= cutoff]
    await _run(services, rows)
    return len(rows)


async def _instances_in(services: Services, scope: Scope) -> dict[InstanceKey, tuple[str, bool]]:
    """The instances of ``scope``: (lake path, indexed) of every index entry and every file at a contract path."""
    found: dict[InstanceKey, tuple[str, bool]] = {}
    if scope.sop:
        key = InstanceKey(scope.partition, scope.study, scope.series or "", scope.sop)
        record = await services.index.get_instance(key)
        path = services.layout.instance_path(key)
        if record is not None:
            found[key] = (record.path, True)
        else:
            with contextlib.suppress(FileMissing):
                await services.lake.properties(path)
                found[key] = (path, False)
        return found
    async for record in services.index.instances_of_study(scope.partition, scope.study, scope.series, metadata=False):
        found[record.key] = (record.path, True)
    if scope.series:
        folder = services.layout.series_folder(scope.partition, scope.study, scope.series)
    else:
        folder = services.layout.study_folder(scope.partition, scope.study)
    async for file in services.lake.list(folder):
        key = services.layout.parse_instance_path(file.path)
        if key is not None and key not in found:
            found[key] = (file.path, False)
    return found


async def _run(services: Services, rows: list[JournalRow]) -> None:
    """Steps 2-6 of the module docstring for claimed journal rows (any number of jobs and studies)."""
    if not rows:
        return
    slots = asyncio.Semaphore(_FILE_CONCURRENCY)

    async def delete_file(path: str) -> None:
        async with slots:
            await services.lake.delete(path)

    await asyncio.gather(*(delete_file(row.path) for row in rows if row.path))
    indexed = [row for row in rows if row.indexed]
    changes = [Change(row.key, services.layout.instance_path(row.key), "", deleted=True) for row in indexed]
    await services.changefeed.append(changes)
    removed: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for row in indexed:
        removed[(row.job, row.key.partition, row.key.study, row.key.series)] += 1
    for (job, partition, study, series), count in removed.items():
        await services.index.record_deleted(partition, study, series, count, job)
    for row in indexed:
        await services.index.delete_instance(row.key)
    await services.deletes.release(rows)
