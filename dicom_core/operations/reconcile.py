"""Bring the index in line with the lake, the source of truth: one path (reconcile) or all of them (reindex).

``reconcile_path`` looks at what is at a lake path now, whatever the event said
(created or deleted events can arrive late or out of order), and converges:

- a file at a contract path that the index lacks, or whose ETag differs from the
  indexed one, is read and checked: its StudyInstanceUID, SeriesInstanceUID and
  SOPInstanceUID must be those of its path, else it is rejected and never indexed
  (and an entry under that path is dropped; the file itself is left alone);
- an entry whose file is gone is dropped (through the delete journal, so counts stay exact);
- the change feed gets the create/update/delete the index did not announce yet.

Every step is idempotent and conditional (entities are created only when absent and
counted only by their creator; the feed skips versions it announced), so reconciles
may run concurrently with each other, with stores and with deletes. After acting, the
file is looked at again: if it changed meanwhile, the path is reconciled again.
Paths outside the layout (the health folder, staging, other folders) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.core.exceptions import ResourceModifiedError

from dicom_core.dicom.levels import Level
from dicom_core.errors import NotFound
from dicom_core.operations.delete import delete, finish_all_interrupted, finish_interrupted
from dicom_core.operations.describing import describe_file
from dicom_core.operations.extended_tags import indexed_declarations, record_tag_errors
from dicom_core.operations.indexing import index_entries
from dicom_core.operations.tag_jobs import index_tags_added_since
from dicom_core.services import Services
from dicom_core.storage.changefeed_store import Change
from dicom_core.storage.errors import StorageContention
from dicom_core.storage.lake import FileMissing, LakeFile
from dicom_core.storage.layout import InstanceKey, Scope

ADDED, REFRESHED, REMOVED, UNCHANGED, REJECTED, IGNORED = "added", "refreshed", "removed", "unchanged", "rejected", "ignored"
_ATTEMPTS = 5


@dataclass(frozen=True)
class ReconcileResult:
    path: str
    outcome: str
    message: str = ""
    size: int = 0


async def reconcile_path(services: Services, path: str, *, listed: LakeFile | None = None) -> ReconcileResult:
    """Converge the index entry of ``path`` with the file there now (``listed``: its listing, saving a read)."""
    key = services.layout.parse_instance_path(path)
    if key is None:
        return ReconcileResult(path, IGNORED, "outside the contract layout")
    await finish_interrupted(services, key.partition, key.study)
    for _ in range(_ATTEMPTS):
        current = listed or await _file_at(services, path)
        listed = None
        try:
            result = await _converge(services, key, path, current)
        except ResourceModifiedError:
            continue  # the file changed while it was read
        if _etag(await _file_at(services, path)) == _etag(current):
            return result
    raise StorageContention(f"{path} kept changing while it was reconciled ({_ATTEMPTS} attempts)")


def _etag(file: LakeFile | None) -> str | None:
    return file.etag if file is not None else None


async def _file_at(services: Services, path: str) -> LakeFile | None:
    try:
        return await services.lake.properties(path)
    except FileMissing:
        return None


async def _converge(services: Services, key: InstanceKey, path: str, file: LakeFile | None) -> ReconcileResult:
    existing = await services.index.get_instance(key)
    if file is None:
        if existing is None:
            return ReconcileResult(path, UNCHANGED, "no file and no index entry")
        await _drop_entry(services, key)
        return ReconcileResult(path, REMOVED, "the file is gone: its index entry was removed")
    if existing is not None and existing.etag == file.etag:
        await services.changefeed.append([Change(key, path, file.etag)])
        return ReconcileResult(path, UNCHANGED, size=file.size)
    tags = await indexed_declarations(services)
    problem, described = await describe_file(services, path, file, tags)
    if described is not None:
        parsed = described.parsed
        found = (parsed.study_uid, parsed.series_uid, parsed.sop_uid)
        if found != (key.study, key.series, key.sop):
            problem = (
                f"its UIDs (study {found[0]}, series {found[1]}, instance {found[2]}) are not those of its path; "
                "move it to the path of its UIDs"
            )
    if problem:
        if existing is not None:
            await _drop_entry(services, key)
        return ReconcileResult(path, REJECTED, problem, file.size)
    record, update = index_entries(described, key, path, file.size, file.etag)
    await services.index.put_instance(record)
    await services.index.record_stored(update)
    await record_tag_errors(services, key, described.tag_errors)
    await services.changefeed.append([Change(key, path, file.etag)])
    await index_tags_added_since(services, tags, [record])
    return ReconcileResult(path, ADDED if existing is None else REFRESHED, size=file.size)


async def _drop_entry(services: Services, key: InstanceKey) -> None:
    with contextlib.suppress(NotFound):
        await delete(services, Scope(key.partition, key.study, key.series, key.sop), keep_files=True)


@dataclass
class ReindexSummary:
    """What a reindex did, by outcome; ``rejected`` lists each rejected path and why."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((ADDED, REFRESHED, REMOVED, UNCHANGED, IGNORED), 0))
    rejected: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    deletes_finished: int = 0  # instances of interrupted deletes finished
    originals_removed: int = 0  # originals of instances no longer stored
    studies_recounted: int = 0  # studies whose series or study counts were wrong and are now right

    def add(self, result: ReconcileResult) -> None:
        if result.outcome == REJECTED:
            self.rejected.append((result.path, result.message))
        else:
            self.counts[result.outcome] += 1


async def contract_files(services: Services, partition: str | None = None) -> list[LakeFile]:
    """The files under the contract folders (of one partition), health files and foreign paths left out."""
    prefix = services.layout.partition_folder(partition) if partition else services.layout.root
    return [file async for file in services.lake.list(prefix) if services.layout.parse_instance_path(file.path)]


async def reindex(
    services: Services,
    files: list[LakeFile],
    partition: str | None = None,
    progress: Callable[[ReconcileResult], None] | None = None,
    concurrency: int = 8,
) -> ReindexSummary:
    """Bring the index in line with ``files`` (from ``contract_files``): every invariant of docs/reliability.md.

    Interrupted deletes are finished, every file reconciled, entries whose file is gone
    dropped, and every study and series recounted from the entities under it. Idempotent,
    so an interrupted reindex is resumed by running it again: files whose entry is current
    cost two point reads and are not read again. The summary counts what was changed.
    """
    summary = ReindexSummary()
    summary.deletes_finished = await finish_all_interrupted(services)
    slots = asyncio.Semaphore(concurrency)

    async def one(path: str, listed: LakeFile | None) -> None:
        async with slots:
            try:
                result = await reconcile_path(services, path, listed=listed)
            except Exception as error:  # one bad file never stops a bulk import; it is reported
                result = ReconcileResult(path, REJECTED, f"could not be reconciled: {type(error).__name__}: {error}")
                summary.failed.append((path, result.message))
            else:
                summary.add(result)
            if progress is not None:
                progress(result)

    await asyncio.gather(*(one(file.path, file) for file in files))
    # The series of every instance looked at, in the lake or the index: what to recount at the end.
    series_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    present = set()
    for file in files:
        present.add(file.path)
        key = services.layout.parse_instance_path(file.path)
        if key is not None:
            series_of[(key.partition, key.study)].add(key.series)
    missing = []
    async for record in services.index.all_instances(partition):
        series_of[(record.key.partition, record.key.study)].add(record.key.series)
        if record.path not in present:
            missing.append(record.path)
    await asyncio.gather(*(one(path, None) for path in missing))
    summary.studies_recounted = await _recount(services, partition, series_of)
    summary.originals_removed = await _remove_orphan_originals(services, partition)
    return summary


async def _remove_orphan_originals(services: Services, partition: str | None) -> int:
    """Delete the originals kept by bulk updates of instances no longer stored (removed outside the API); how many."""
    layout = services.layout
    originals = [file.path async for file in services.lake.list(layout.originals_folder(partition))]
    if not originals:
        return 0
    stored = {layout.original_path(record.key) async for record in services.index.all_instances(partition)}
    orphans = [path for path in originals if path not in stored]
    await asyncio.gather(*(services.lake.delete(path) for path in orphans))
    return len(orphans)


async def _recount(services: Services, partition: str | None, series_of: dict[tuple[str, str], set[str]]) -> int:
    """Recount the series in ``series_of`` and every study and series with an entity; the number of studies that were wrong."""
    for level in (Level.SERIES, Level.STUDY):
        async for entry in services.index.all_of(level):
            if partition is None or entry.partition == partition:
                series_of[(entry.partition, entry.study)].update([entry.series] if level == Level.SERIES else [])
    slots = asyncio.Semaphore(8)

    async def one(where: tuple[str, str], series: set[str]) -> bool:
        async with slots:
            return await services.index.refresh(*where, sorted(series))

    return sum(await asyncio.gather(*(one(where, series) for where, series in series_of.items())))
