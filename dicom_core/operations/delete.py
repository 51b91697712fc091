"""DELETE of a study, a series or an instance (the Azure DICOM service v2 delete API).

The lake is the source of truth, so the file goes first: once it is gone, the
instance is deleted, and everything after is bookkeeping that can be repeated.
For the instances in scope (the index's entries and the lake's files, so that orphan
files go too, and the journal rows of deletes that did not finish):

1. claim a journal row per instance, with the version (ETag) of the file found, then mark
   the delete running in its study (storage/delete_journal.py): a store that sees the mark
   finds in the journal what a running delete may still remove (operations/store.py,
   docs/reliability.md);
2. delete the files, and the originals a bulk update kept of them. The rows of a delete that
   died delete only the version of the file it found: another version at the path was stored
   after it (a PUT over an instance whose delete had failed), so that instance stays and its
   row is only released;
3. announce the deletes in the change feed (idempotent: the feed remembers them);
4. delete the instance entities;
5. recount the series and the study from the entities left (storage/index.py
   ``refresh``), removing a series or study left empty;
6. release the journal rows and unmark the delete.

Every step is idempotent and counts are derived, so any number of deletes, reconciles
and reindexes may run the same rows at once, and a delete cut off at any step is
finished by the next delete in that study (a retried DELETE finishes the job and answers
204 at once), a reconcile of one of its paths or a reindex. Deleting the file first means
an interrupted delete never leaves a file without an entry (which a reconcile would index
again, bringing the instance back).
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
from dicom_core.storage.lake import FileChanged, FileMissing
from dicom_core.storage.layout import InstanceKey, Scope

_FILE_CONCURRENCY = 16


async def delete(services: Services, scope: Scope, *, keep_files: bool = False) -> int:
    """Delete everything in ``scope``; the number of instances removed. NotFound when there is nothing.

    ``keep_files`` removes only the index entries (reconcile: a file at a contract path
    that is not a valid instance of that path is reported, never deleted).
    """
    job = uuid.uuid4().hex
    longest_request = timedelta(seconds=services.settings.limits.request_timeout_seconds)
    unfinished = [row async for row in services.deletes.rows_of_study(scope.partition, scope.study)]
    targets = await _instances_in(services, scope)
    in_scope = {row.key for row in unfinished if _in(scope, row.key)}
    if not targets and not in_scope:
        raise NotFound(f"{scope.describe()} is not stored in partition {scope.partition}")
    now = datetime.now(UTC)
    # A row without a path keeps its file, also when an interrupted delete is replayed.
    rows = [
        JournalRow(key, job, "" if keep_files else path, now, "" if keep_files else etag) for key, (path, etag) in targets.items()
    ]
    claimed = await services.deletes.claim(rows)
    held = {row.key for row in claimed}
    # Marked running only now, before anything is removed: while marked, every instance it may still
    # remove has its journal row, which a store racing it reads (operations/store.py, _DeleteWatch).
    await services.deletes.begin(scope.partition, scope.study, job)
    try:
        # Rows of other deletes in the study are run here too: the steps are idempotent, this
        # request must not answer before the instances it was asked to delete are gone, and
        # a delete that was cut off is finished by the next one.
        stored_since = await _run(services, claimed + [row for row in unfinished if row.key not in held])
        # The row of a delete that died found an earlier version than this one did (a PUT came
        # between them): this delete removes what it found itself, with a row of its own.
        again = [row for row in rows if row.etag and row.key in stored_since and row.key not in held]
        await _run(services, await services.deletes.claim(again))
    finally:
        await services.deletes.end(scope.partition, scope.study, job, longest_request)
    return len(targets.keys() | in_scope)


async def finish_interrupted(services: Services, partition: str, study: str) -> int:
    """Run the journal rows of ``study`` left by deletes that did not finish; the number of instances finished."""
    rows = [row async for row in services.deletes.rows_of_study(partition, study)]
    await _run(services, rows)
    return len(rows)


async def finish_rows(services: Services, rows: list[JournalRow]) -> set[InstanceKey]:
    """Run ``rows`` now, whether their deletes died or are still running (a store settling a racing delete).

    Returns the instances they removed: not those where another version of the file was stored since.
    """
    return {row.key for row in rows} - await _run(services, rows)


async def finish_all_interrupted(services: Services) -> int:
    """Run every journal row left by a delete that did not finish (reindex)."""
    rows = [row async for row in services.deletes.all_rows()]
    await _run(services, rows)
    return len(rows)


def _in(scope: Scope, key: InstanceKey) -> bool:
    """Whether ``key`` (of the scope's study) is in the series or instance the scope names."""
    return (scope.series is None or key.series == scope.series) and (scope.sop is None or key.sop == scope.sop)


async def _instances_in(services: Services, scope: Scope) -> dict[InstanceKey, tuple[str, str]]:
    """The lake path of every instance of ``scope`` (its index entries and every file at a contract path),
    and the ETag of the file there ("" when there is none)."""
    found: dict[InstanceKey, tuple[str, str]] = {}
    if scope.sop:
        key = InstanceKey(scope.partition, scope.study, scope.series or "", scope.sop)
        record = await services.index.get_instance(key)
        path = record.path if record is not None else services.layout.instance_path(key)
        with contextlib.suppress(FileMissing):
            found[key] = (path, (await services.lake.properties(path)).etag)
        if record is not None and key not in found:
            found[key] = (path, "")
        return found
    indexed = {
        record.key: record.path
        async for record in services.index.instances_of_study(scope.partition, scope.study, scope.series, metadata=False)
    }
    if scope.series:
        folder = services.layout.series_folder(scope.partition, scope.study, scope.series)
    else:
        folder = services.layout.study_folder(scope.partition, scope.study)
    files = {file.path: file.etag async for file in services.lake.list(folder)}
    for key, path in indexed.items():
        found[key] = (path, files.get(path, ""))
    for path, etag in files.items():
        key = services.layout.parse_instance_path(path)
        if key is not None and key not in found:
            found[key] = (path, etag)
    return found


async def _originals_of(services: Services, rows: list[JournalRow]) -> list[str]:
    """The originals a bulk update kept of the instances whose files ``rows`` delete: one listing per study."""
    wanted = {services.layout.original_path(row.key) for row in rows if row.path}
    studies = {(row.key.partition, row.key.study) for row in rows if row.path}
    found = []
    for partition, study in studies:
        async for file in services.lake.list(services.layout.originals_folder(partition, study)):
            if file.path in wanted:
                found.append(file.path)
    return found


async def _running_deletes(services: Services, studies: set[tuple[str, str]]) -> dict[tuple[str, str], frozenset[str]]:
    """The jobs marked running in each of ``studies``."""

    async def jobs(partition: str, study: str) -> frozenset[str]:
        marker = await services.deletes.marker(partition, study)
        return marker.jobs if marker is not None else frozenset()

    listed = sorted(studies)
    return dict(zip(listed, await asyncio.gather(*(jobs(*study) for study in listed)), strict=True))


async def _run(services: Services, rows: list[JournalRow]) -> set[InstanceKey]:
    """Steps 2-6 of the module docstring for journal rows (any number of jobs and studies).

    A row of a delete marked running removes whatever file is at its path, as that delete does
    (a store racing it settles by the same rule: operations/store.py). A row of a delete that is
    not running any more (it died; it never marked itself, or its mark aged out) removes only the
    version it found: its client never heard back, and a store since may have been answered (a
    bulk update's new version too: the delete's client retries to remove it).
    Returns the instances left stored: another version of the file was there.
    """
    if not rows:
        return set()
    slots = asyncio.Semaphore(_FILE_CONCURRENCY)
    stored_since: set[InstanceKey] = set()
    running = await _running_deletes(services, {(row.key.partition, row.key.study) for row in rows})

    async def bounded(step) -> None:
        async with slots:
            await step

    async def delete_file(row: JournalRow) -> None:
        etag = "" if row.job in running[(row.key.partition, row.key.study)] else row.etag
        try:
            await services.lake.delete(row.path, etag=etag)
        except FileChanged:
            stored_since.add(row.key)

    await asyncio.gather(*(bounded(delete_file(row)) for row in rows if row.path))
    removed = [row for row in rows if row.key not in stored_since]
    await asyncio.gather(*(bounded(services.lake.delete(path)) for path in await _originals_of(services, removed)))
    await services.changefeed.append(
        [Change(row.key, services.layout.instance_path(row.key), "", deleted=True) for row in removed]
    )
    await asyncio.gather(*(bounded(services.index.delete_instance(row.key)) for row in removed))
    series_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in removed:
        series_of[(row.key.partition, row.key.study)].add(row.key.series)
    for (partition, study), series in series_of.items():
        await services.index.refresh(partition, study, sorted(series))
    await services.deletes.release(rows)
    return stored_since
