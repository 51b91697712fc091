"""STOW-RS: store instances (PS3.18 10.5) and report each outcome (PS3.18 Annex I).

Each instance succeeds or fails on its own. The sequence for one instance is:
parse and validate the header, zero the preamble, write the file atomically at
its contract path (create-only for POST, replace for PUT), then write its index
entity (in transactions of up to 100 per study). Then, once per request:

- the change feed announces the new versions, and at the same time every series
  touched is recounted from its instance entities, and its study from
  its series (storage/index.py ``refresh``), instances already stored included, so a
  retry of a request that was cut off repairs the counts and the feed it left behind;
- then, when a DELETE ran in one of the studies meanwhile (the delete marker of
  storage/delete_journal.py was set or changed), its instances there are settled against
  the delete journal and the lake (``_DeleteWatch``), announced and counted again: a store
  racing a delete ends stored and counted, or refused.

A request killed at any point leaves files that are indexed or orphans (a retry, the
blob-created event in Azure or a reindex indexes them): docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from azure.core.exceptions import AzureError

from dicom_core.dicom.errors import InvalidInstance, UnreadableInstance
from dicom_core.dicom.extended_tags import TagDeclaration
from dicom_core.dicom.failure_reasons import (
    CANNOT_UNDERSTAND,
    INSTANCE_EXISTS,
    PROCESSING_FAILURE,
    STUDY_UID_MISMATCH,
    VALIDATION_FAILED,
)
from dicom_core.dicom.parse import PREAMBLE_LENGTH
from dicom_core.errors import StorageUnavailable
from dicom_core.operations.delete import finish_rows
from dicom_core.operations.describing import describe
from dicom_core.operations.extended_tags import indexed_declarations, record_tag_errors
from dicom_core.operations.indexing import index_entries
from dicom_core.operations.tag_jobs import index_tags_added_since
from dicom_core.services import Services
from dicom_core.storage.changefeed_store import Change
from dicom_core.storage.delete_journal import DeleteMarker
from dicom_core.storage.errors import STORAGE_FAILURES, describe_failure
from dicom_core.storage.index import MAX_TRANSACTION_BYTES, PreparedInstance
from dicom_core.storage.lake import FileMissing, InstanceExists, LakeFile
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import InstanceRecord, LevelUpdate
from dicom_core.storage.tables import MAX_TRANSACTION_OPERATIONS

logger = logging.getLogger(__name__)
# Encoding an instance entity compresses its DICOM JSON and its frames' byte ranges. A large one is encoded
# in a worker thread, so that the event loop is never held for long; a small one inline: a CT's (12 KB of
# JSON, one frame) takes 0.15 ms of CPU, and the hop to a thread and back cost 0.2 ms more than that.
_ENCODE_INLINE_BYTES = 64 * 1024
_ENCODE_INLINE_FRAMES = 1000


@dataclass
class ReceivedPart:
    """One body part as the HTTP layer received it, already on local storage."""

    media_type: str
    file: BinaryIO
    size: int
    # Set when the HTTP layer already knows the part cannot be stored (e.g. too large).
    refusal: tuple[int, str] | None = None


@dataclass(frozen=True)
class StoreRequest:
    partition: str
    study_uid: str | None  # the study in the URL, if any
    upsert: bool  # PUT replaces existing instances, POST refuses them
    base_url: str  # the URL prefix of this partition's resources, e.g. http://host/v2


@dataclass
class InstanceOutcome:
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    retrieve_url: str | None = None
    failure_reason: int | None = None
    message: str = ""
    replaced: bool = False


@dataclass
class StoreResult:
    outcomes: list[InstanceOutcome]
    study_retrieve_url: str | None = None
    storage_failures: list[str] = field(default_factory=list)

    @property
    def stored(self) -> list[InstanceOutcome]:
        return [outcome for outcome in self.outcomes if outcome.failure_reason is None]

    @property
    def failed(self) -> list[InstanceOutcome]:
        return [outcome for outcome in self.outcomes if outcome.failure_reason is not None]

    @property
    def status(self) -> int:
        """200 all stored, 202 some stored, 409 none stored (PS3.18 10.5.3, docs/errors.md)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def to_dicom_json(self) -> dict:
        """The Store Instances Response Module (PS3.18 Table I.2-1) as DICOM JSON."""
        body: dict = {}
        if self.study_retrieve_url:
            body["00081190"] = {"vr": "UR", "Value": [self.study_retrieve_url]}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [_failed_item(outcome) for outcome in self.failed]}
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [_referenced_item(outcome) for outcome in self.stored]}
        return body


def _uid_attribute(value: str) -> dict:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _referenced_item(outcome: InstanceOutcome) -> dict:
    return {
        "00081150": _uid_attribute(outcome.sop_class_uid),
        "00081155": _uid_attribute(outcome.sop_instance_uid),
        "00081190": {"vr": "UR", "Value": [outcome.retrieve_url]},
    }


def _failed_item(outcome: InstanceOutcome) -> dict:
    item = {
        "00081150": _uid_attribute(outcome.sop_class_uid),
        "00081155": _uid_attribute(outcome.sop_instance_uid),
        "00081197": {"vr": "US", "Value": [outcome.failure_reason]},
    }
    if outcome.message:
        # ErrorComment (0000,0902) carries the human-readable reason, as the Azure service does.
        item["00000902"] = {"vr": "LO", "Value": [outcome.message]}
    return item


async def store_instances(services: Services, request: StoreRequest, parts: AsyncIterator[ReceivedPart]) -> StoreResult:
    """Store every part of a STOW-RS request; see the module docstring."""
    slots = asyncio.Semaphore(services.settings.limits.store_concurrency)
    tags = await indexed_declarations(services)  # read once per request: the extended query tags to index
    entities = _InstanceEntityBatches(services)
    deletes = _DeleteWatch(services)
    tasks: list[asyncio.Task] = []
    received: list[ReceivedPart] = []
    claimed: set[InstanceKey] = set()  # instances a part of this request is storing

    async def run(part: ReceivedPart) -> InstanceOutcome:
        try:
            outcome, pending = await _store_file(services, request, part, deletes, tags, claimed)
        finally:
            part.file.close()
            slots.release()
        if pending is not None and pending.stored_before:
            entities.already_stored(outcome, pending)
        elif pending is not None:
            await entities.add(outcome, pending)
        return outcome

    try:
        async for part in parts:
            await slots.acquire()  # back-pressure: read the next part only when a slot is free
            received.append(part)
            tasks.append(asyncio.create_task(run(part)))
        outcomes = list(await asyncio.gather(*tasks))
        await entities.flush_all()
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await entities.cancel()
        for part in received:
            part.file.close()  # a task cancelled before it started never ran its own close
        raise
    result = StoreResult(outcomes)
    touched = entities.indexed + entities.duplicates
    try:
        await _announce_and_count(services, [pending for _, pending in touched])
        # Only now, once announced: a delete that begins later finds the instances in the feed (docs/reliability.md).
        while raced := await deletes.raced():
            await _announce_and_count(services, await deletes.settle(raced, touched), settled=True)
        await index_tags_added_since(services, tags, [p.record for _, p in entities.indexed if not p.withdrawn])
    except STORAGE_FAILURES as error:
        raise StorageUnavailable(describe_failure("updating the study and series index entries", error)) from error

    storage_failures = [o for o in outcomes if o.failure_reason == PROCESSING_FAILURE]
    if storage_failures and len(storage_failures) == len(outcomes):
        raise StorageUnavailable(f"no instance was stored: {storage_failures[0].message}")
    studies = {outcome.study_uid for outcome in result.stored}
    study = request.study_uid or (studies.pop() if len(studies) == 1 else None)
    if study and result.stored:
        result.study_retrieve_url = f"{request.base_url}/studies/{study}"
    return result


async def _announce_and_count(services: Services, touched: list[_PendingEntity], *, settled: bool = False) -> None:
    # Independent of each other once the entities are in: the feed and the counts are written at once.
    await asyncio.gather(_announce(services, touched, settled=settled), _record_levels(services, [p.update for p in touched]))


async def _record_levels(services: Services, updates: list[LevelUpdate]) -> None:
    """One recount per series touched (the last attributes seen win); studies in parallel, series of a study in turn."""
    merged = {(update.partition, update.study, update.series): update for update in updates}
    by_study: dict[tuple[str, str], list[LevelUpdate]] = defaultdict(list)
    for (partition, study, _), update in merged.items():
        by_study[(partition, study)].append(update)

    async def record_study(study_updates: list[LevelUpdate]) -> None:
        for update in study_updates:
            await services.index.record_stored(update)

    await asyncio.gather(*(record_study(study_updates) for study_updates in by_study.values()))


@dataclass
class _PendingEntity:
    """An instance whose file is in the lake and whose index entity is not written yet (or was, before: a duplicate)."""

    record: InstanceRecord
    update: LevelUpdate
    replaced: bool
    stored_before: bool = False  # a POST of an instance already stored: nothing is written, the feed and counts checked
    withdrawn: bool = False  # a concurrent delete removed it: its entry is gone, its delete is announced


class _DeleteWatch:
    """Whether a DELETE ran in a study while this request stored into it, and settling its instances there.

    A delete marks itself running in its study (storage/delete_journal.py, the marker) only once it
    holds a journal row for every instance it removes, and removes nothing before. The marker is read
    before the first file of a study is written and again once its entities are written and announced:
    a delete that could have removed one of them was running at the first read, or began or ended
    since, so it changed the marker. One that begins later finds them indexed and announced, and
    removes them whole (docs/reliability.md, Races).
    """

    def __init__(self, services: Services) -> None:
        self._services = services
        self._before: dict[tuple[str, str], asyncio.Future] = {}
        # The marker each study is compared with next, and whether the deletes running then are yet to be settled.
        self._since: dict[tuple[str, str], tuple[DeleteMarker | None, bool]] | None = None

    async def before_writing(self, partition: str, study: str) -> None:
        if (partition, study) not in self._before:
            self._before[(partition, study)] = asyncio.ensure_future(self._services.deletes.marker(partition, study))
        await self._before[(partition, study)]

    async def raced(self) -> set[tuple[str, str]]:
        """The studies where a delete may have removed instances of this request since they were last settled.

        A delete running at the first read counts; after a settle, only one that began or ended
        since: one running then held its rows already, and the settle read them.
        """
        if self._since is None:
            self._since = {study: (first.result(), True) for study, first in self._before.items()}
        raced = set()
        for study, (before, unsettled) in list(self._since.items()):
            after = await self._services.deletes.marker(*study)
            if (unsettled and before is not None and before.jobs) or _version(before) != _version(after):
                raced.add(study)
                self._since[study] = (after, False)
            else:
                del self._since[study]
        return raced

    async def settle(
        self, studies: set[tuple[str, str]], touched: list[tuple[InstanceOutcome, _PendingEntity]]
    ) -> list[_PendingEntity]:
        """Bring this request's instances in ``studies`` in line with the deletes that ran there.

        Read after the marker, the journal holds a row for every instance that a delete marked
        then may still remove: such an instance is deleted here and now (its row finished: every
        step is idempotent) and reported failed, rather than waiting for that delete, which may
        have died. The row of a delete that is not running any more removes only the version it
        found, never this request's (operations/delete.py). Any other delete that touched an
        instance is done with it (``_kept``).
        Returns the instances settled, to announce and count again.
        """
        rows = {row.key: row for study in studies async for row in self._services.deletes.rows_of_study(*study)}
        mine = [(o, p) for o, p in touched if (p.record.key.partition, p.record.key.study) in studies and not p.withdrawn]
        held = [rows[p.record.key] for _, p in mine if p.record.key in rows and rows[p.record.key].path]
        removed = await finish_rows(self._services, held)
        for outcome, pending in mine:
            if pending.record.key in removed or not await self._kept(pending):
                pending.withdrawn = True
                outcome.failure_reason = PROCESSING_FAILURE
                outcome.message = "a DELETE of this study that ran at the same time removed the instance; store it again"
                outcome.retrieve_url = None
        return [pending for _, pending in mine]

    async def _kept(self, pending: _PendingEntity) -> bool:
        """Whether an instance no delete holds any more is still stored; its entry follows its file.

        A delete removes the file first and the entry after. So when the file is gone, a delete
        removed it: the entry goes too. When the file is the one this request wrote and the entry
        is gone, the delete had listed an earlier file there (an orphan, an earlier version) and
        removed the entry after this request wrote both again: the entry is written back.
        """
        key = pending.record.key
        try:
            file = await self._services.lake.properties(pending.record.path)
        except FileMissing:
            await self._services.index.delete_instance(key)
            return False
        ours = not pending.stored_before and file.etag == pending.record.etag
        if ours and await self._services.index.get_instance(key) is None:
            await self._services.index.put_instance(pending.record)
        return True


def _version(marker: DeleteMarker | None) -> str | None:
    return marker.version if marker is not None else None


class _InstanceEntityBatches:
    """Write instance entities in Table transactions: one per study, up to 100 entities and ~2 MiB.

    A transaction is atomic, so when one fails its entities are retried one by one; an
    instance whose entity still cannot be written is reported failed (272) and its new
    file removed, so that the client's retry is not refused as a duplicate. Each instance
    comes once per request (``_store_file`` refuses its other parts), so it is once in a
    transaction, as Table Storage requires.
    """

    def __init__(self, services: Services) -> None:
        self._services = services
        # Open batches by study: a transaction holds entities of one PartitionKey only.
        self._open: dict[tuple[str, str], list[tuple[InstanceOutcome, _PendingEntity, PreparedInstance]]] = {}
        self._open_bytes: dict[tuple[str, str], int] = defaultdict(int)
        self._flushes: list[asyncio.Task] = []
        self.indexed: list[tuple[InstanceOutcome, _PendingEntity]] = []
        self.duplicates: list[tuple[InstanceOutcome, _PendingEntity]] = []

    def already_stored(self, outcome: InstanceOutcome, pending: _PendingEntity) -> None:
        self.duplicates.append((outcome, pending))

    async def add(self, outcome: InstanceOutcome, pending: _PendingEntity) -> None:
        record = pending.record
        if len(record.metadata_json or b"") <= _ENCODE_INLINE_BYTES and record.number_of_frames <= _ENCODE_INLINE_FRAMES:
            prepared = self._services.index.prepare_instance(record)
        else:
            prepared = await asyncio.to_thread(self._services.index.prepare_instance, record)
        study = (record.key.partition, record.key.study)
        batch = self._open.setdefault(study, [])
        batch.append((outcome, pending, prepared))
        self._open_bytes[study] += prepared.size
        if len(batch) >= MAX_TRANSACTION_OPERATIONS or self._open_bytes[study] >= MAX_TRANSACTION_BYTES:
            self._start_flush(study)

    def _start_flush(self, study: tuple[str, str]) -> None:
        self._open_bytes.pop(study, None)
        batch = self._open.pop(study, [])
        if batch:
            self._flushes.append(asyncio.create_task(self._write(batch)))

    async def flush_all(self) -> None:
        for study in list(self._open):
            self._start_flush(study)
        await asyncio.gather(*self._flushes)

    async def cancel(self) -> None:
        for task in self._flushes:
            task.cancel()
        await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _write(self, batch: list[tuple[InstanceOutcome, _PendingEntity, PreparedInstance]]) -> None:
        index = self._services.index
        try:
            await index.put_instances([prepared for _, _, prepared in batch])
            self.indexed.extend((outcome, pending) for outcome, pending, _ in batch)
        except AzureError:
            logger.warning("an instance entity transaction failed; writing its %d entities one by one", len(batch))
            for outcome, pending, _ in batch:
                try:
                    await index.put_instance(pending.record)
                except AzureError as error:
                    await self._fail(outcome, pending, error)
                else:
                    self.indexed.append((outcome, pending))

    async def _fail(self, outcome: InstanceOutcome, pending: _PendingEntity, error: AzureError) -> None:
        outcome.failure_reason = PROCESSING_FAILURE
        outcome.message = describe_failure("indexing the stored instance", error)
        outcome.retrieve_url = None
        if not pending.replaced:
            with contextlib.suppress(AzureError):
                await self._services.lake.delete(pending.record.path)


async def _announce(services: Services, indexed: list[_PendingEntity], *, settled: bool = False) -> None:
    """Add the change-feed entries of indexed instances (create, or update when replaced; nothing when announced).

    A withdrawn instance's delete is announced instead (nothing when its delete announced it).
    The instance is stored and indexed already, so a feed that cannot be written does
    not fail it: the version stays unannounced until a reconcile of its path (the
    blob-created event in Azure) or a reindex announces it (operations/reconcile.py).
    """
    try:
        changes = [
            Change(p.record.key, p.record.path, "", deleted=True)
            if p.withdrawn
            else Change(p.record.key, p.record.path, p.record.etag, probably_new=not (p.replaced or p.stored_before or settled))
            for p in indexed
        ]
        await services.changefeed.append(changes)
    except STORAGE_FAILURES as error:
        logger.warning("the change feed could not be written for %d instances: %s", len(indexed), type(error).__name__)


async def _store_file(
    services: Services,
    request: StoreRequest,
    part: ReceivedPart,
    deletes: _DeleteWatch,
    tags: list[TagDeclaration],
    claimed: set[InstanceKey],
) -> tuple[InstanceOutcome, _PendingEntity | None]:
    """Validate one part and write its file; the index entity is written by the caller, in batches.

    The parts of a request are stored concurrently, so two parts of one instance would race for its
    file and its entity: the first one described claims the instance, and the others are refused.
    """
    if part.refusal is not None:
        reason, message = part.refusal
        return InstanceOutcome(failure_reason=reason, message=message), None
    if part.media_type != "application/dicom":
        return InstanceOutcome(
            failure_reason=CANNOT_UNDERSTAND,
            message=f"part has media type {part.media_type or '(none)'}; expected application/dicom",
        ), None
    try:
        prepared = await describe(part.file, part.size, services.settings.limits, tags)
    except InvalidInstance as invalid:
        reason = CANNOT_UNDERSTAND if isinstance(invalid, UnreadableInstance) else VALIDATION_FAILED
        return InstanceOutcome(failure_reason=reason, message=str(invalid)), None
    # The preamble can carry an executable (DICOM/PE polyglots, CVE-2019-11687): never store it.
    part.file.seek(0)
    part.file.write(bytes(PREAMBLE_LENGTH))
    parsed = prepared.parsed
    outcome = InstanceOutcome(sop_class_uid=parsed.sop_class_uid, sop_instance_uid=parsed.sop_uid, study_uid=parsed.study_uid)
    if request.study_uid and parsed.study_uid != request.study_uid:
        outcome.failure_reason = STUDY_UID_MISMATCH
        outcome.message = f"StudyInstanceUID {parsed.study_uid} differs from the study in the URL"
        return outcome, None

    key = InstanceKey(request.partition, parsed.study_uid, parsed.series_uid, parsed.sop_uid)
    if key in claimed:
        outcome.failure_reason = INSTANCE_EXISTS
        outcome.message = (
            "this instance is more than once in this request; another of its parts is the one stored (or reported failed)"
        )
        return outcome, None
    claimed.add(key)
    path = services.layout.instance_path(key)
    try:
        await deletes.before_writing(key.partition, key.study)
        written, replaced = await _write_file(services, request, key, path, part)
    except _AlreadyStored as stored:
        outcome.failure_reason = INSTANCE_EXISTS
        outcome.message = "an instance with these UIDs is already stored; use PUT to replace it"
        # Checked as if stored again: a request cut off after indexing it may not have announced or counted it.
        _, update = index_entries(prepared, key, path, part.size, stored.record.etag)
        return outcome, _PendingEntity(stored.record, update, replaced=False, stored_before=True)
    except (AzureError, OSError) as error:
        logger.warning("writing an instance file failed: %s", type(error).__name__)
        outcome.failure_reason = PROCESSING_FAILURE
        outcome.message = describe_failure("writing the instance to the lake", error)
        return outcome, None

    outcome.replaced = replaced
    outcome.retrieve_url = f"{request.base_url}/studies/{key.study}/series/{key.series}/instances/{key.sop}"
    record, update = index_entries(prepared, key, path, part.size, written.etag)
    try:
        await record_tag_errors(services, key, prepared.tag_errors)
    except STORAGE_FAILURES as error:  # the instance is stored all the same; its tag errors go unlisted
        logger.warning("extended query tag errors could not be recorded: %s", type(error).__name__)
    return outcome, _PendingEntity(record, update, replaced)


class _AlreadyStored(Exception):
    """POST of an instance that is stored and indexed: ``record`` is its index entry."""

    def __init__(self, record: InstanceRecord) -> None:
        super().__init__(record.path)
        self.record = record


async def _write_file(
    services: Services, request: StoreRequest, key: InstanceKey, path: str, part: ReceivedPart
) -> tuple[LakeFile, bool]:
    """Write the file create-only; on a conflict replace it for PUT, or for POST when it is an orphan.

    An orphan is a file without an index entity: the leftover of a store that failed
    between the two writes. POST may take its place; only an indexed instance is a duplicate.
    Returns the written file and whether an indexed instance was replaced.
    """
    part.file.seek(0)
    try:
        return await services.lake.write(path, part.file, part.size, overwrite=False), False
    except InstanceExists:
        record = await services.index.get_instance(key)
        if record is not None and not request.upsert:
            raise _AlreadyStored(record) from None
    part.file.seek(0)
    return await services.lake.write(path, part.file, part.size, overwrite=True), record is not None
