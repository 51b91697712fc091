"""Bulk update: change patient and study attributes of up to 50 studies, keeping each original (docs/bulk-update.md).

``POST /v2/studies/$bulkUpdate`` checks the body and starts an operation of type ``update``
(operations/jobs.py). Its handler, ``BulkUpdateJob``, takes the studies in turn and up to a
batch of instances per step. For each instance:

1. read the file's header (a ranged read up to the first frame, whose offset the index keeps:
   operations/file_header.py);
2. the first time the instance is changed, copy the file as received to its original's path
   (storage/layout.py ``original_path``), server-side;
3. write the file again at its contract path: the new header, then the old file's bytes from
   the Pixel Data element on, staged from the file itself (storage/lake.py ``splice``), so
   pixel data is never decoded and never passes through the service. The commit is
   conditional on the file's ETag and records in the blob's metadata which version it
   replaced and by how many bytes the header grew;
4. replace the index entry under its ETag: new file ETag and size, frame offsets moved by
   the header's growth, the changed attributes in the DICOM JSON, the original's path.

Then the batch's versions go to the change feed (``update`` entries), and when the study's
last instance is done its study and series entities take the new values, lookup entries
moving with them. Every step can be redone: a header that already has the new values is
not written again; a file written by a step that was cut off before its index entry is
recognised by the version it says it replaced; the feed announces a version once. So an
update that is interrupted resumes from its checkpoint and leaves every study updated whole.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace

from dicom_core.dicom.extended_tags import TagDeclaration
from dicom_core.dicom.levels import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS, Level, level_json
from dicom_core.dicom.structure import DEFLATED_SYNTAXES
from dicom_core.dicom.uids import uid_problem
from dicom_core.dicom.update import (
    SPECIFIC_CHARACTER_SET,
    ChangeDataset,
    RewrittenHeader,
    character_set_of,
    parse_change_dataset,
    rewrite_file,
    rewrite_header,
)
from dicom_core.errors import BadRequest, Conflict
from dicom_core.operations import jobs
from dicom_core.operations.extended_tags import indexed_declarations
from dicom_core.operations.file_header import HeaderTooLarge, read_header
from dicom_core.operations.indexing import extended_values
from dicom_core.operations.jobs import FINISHED, OperationFailed, Progress
from dicom_core.services import Services
from dicom_core.settings import DEFAULT_PARTITION
from dicom_core.storage.changefeed_store import Change
from dicom_core.storage.lake import FileChanged, FileMissing, LakeFile
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import InstanceRecord, OperationRecord

UPDATE = "update"
MAX_STUDIES = 50
"""Azure's limit of studies in one bulk update."""
_INSTANCES_IN_FLIGHT = 8
_ATTEMPTS = 3  # an instance stored again while it is updated is updated again, up to this often
_ERRORS_KEPT = 20  # the operation's results list this many error messages (and count all)
# Blob metadata on a rewritten file: the ETag of the version it replaced, and how far the header moved its pixel data.
UPDATED_FROM = "dicomupdatedfrom"
OFFSET_SHIFT = "dicomoffsetshift"


def update_parameters(body: object, partition: str) -> dict:
    """The operation's parameters from the body of POST .../studies/$bulkUpdate; 400 saying what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with studyInstanceUids and changeDataset")
    unknown = sorted(set(body) - {"studyInstanceUids", "changeDataset"})
    if unknown:
        raise BadRequest(f"the body has an unknown field {unknown[0][:40]!r}; give studyInstanceUids and changeDataset")
    studies = body.get("studyInstanceUids")
    if not isinstance(studies, list) or not studies:
        raise BadRequest("studyInstanceUids must be a non-empty array of Study Instance UIDs")
    if len(studies) > MAX_STUDIES:
        raise BadRequest(f"studyInstanceUids has {len(studies)} studies; one bulk update changes at most {MAX_STUDIES}")
    for position, uid in enumerate(studies):
        problem = uid_problem(uid) if isinstance(uid, str) else "it is not a string"
        if problem:
            raise BadRequest(f"studyInstanceUids[{position}] {str(uid)[:70]!r} is not a UID: {problem}")
    if "changeDataset" not in body:
        raise BadRequest("the body has no changeDataset: give the attributes to change as DICOM JSON")
    change = parse_change_dataset(body["changeDataset"])
    return {"partition": partition, "studies": list(dict.fromkeys(studies)), "change": change.elements}


async def start_bulk_update(services: Services, body: object, partition: str) -> OperationRecord:
    """Start a bulk update (202); 409 when an unfinished one changes one of the same studies."""
    parameters = update_parameters(body, partition)
    studies = set(parameters["studies"])
    for operation_id in await services.operations.pending():
        other = await services.operations.get(operation_id)
        if other is None or other.type != UPDATE or other.status in FINISHED:
            continue
        both = studies & set(other.parameters["studies"]) if other.parameters["partition"] == partition else set()
        if both:
            raise Conflict(
                f"study {sorted(both)[0]} is being changed by bulk update {other.id}, which has not finished; "
                "one bulk update at a time changes a study: follow that operation, then send this one again"
            )
    prefix = "" if partition == DEFAULT_PARTITION else f"/partitions/{partition}"
    return await jobs.start(services, UPDATE, parameters, tuple(f"{prefix}/studies/{study}" for study in parameters["studies"]))


def _results() -> dict:
    """The operation's public counts, as Azure's update operation reports them."""
    return {"studyProcessed": 0, "studyUpdated": 0, "studyFailed": 0, "instanceUpdated": 0, "errors": []}


@dataclass
class _StudyState:
    """How the study being updated is going: the last instance done and whether one of its instances failed."""

    after: list[str] | None = None
    failed: bool = False


class BulkUpdateJob:
    """One batch of instances of one study per step; a study's entities once its last instance is done."""

    async def step(self, services: Services, operation: OperationRecord) -> Progress:
        parameters = operation.parameters
        change = ChangeDataset(parameters["change"])
        partition, studies = parameters["partition"], parameters["studies"]
        checkpoint = operation.checkpoint or {"next": 0, "after": None, "failed": False, "results": _results()}
        position, results = checkpoint["next"], _copy_results(checkpoint["results"])
        state = _StudyState(checkpoint["after"], checkpoint["failed"])
        study = studies[position]
        after = None if state.after is None else InstanceKey(partition, study, *state.after)
        batch_size = services.settings.jobs.batch_size
        batch: list[InstanceRecord] = []
        async for record in services.index.instances_of_study(partition, study, after=after, page_size=batch_size):
            batch.append(record)
            if len(batch) == batch_size:
                break
        if not batch and state.after is None:
            _error(results, f"study {study} is not stored")
            state.failed = True
        tags = await indexed_declarations(services)
        updated = await self._update_batch(services, change, tags, batch, results, state)
        await services.changefeed.append([Change(record.key, record.path, record.etag) for record in updated])
        if len(batch) == batch_size:
            state.after = [batch[-1].key.series, batch[-1].key.sop]
        else:
            if batch or state.after is not None:
                await _update_levels(services, change, tags, partition, study)
            results["studyProcessed"] += 1
            results["studyFailed" if state.failed else "studyUpdated"] += 1
            position, state = position + 1, _StudyState()
        checkpoint = {"next": position, "after": state.after, "failed": state.failed, "results": results}
        return Progress(checkpoint, position, len(studies), finished=position == len(studies))

    async def _update_batch(
        self,
        services: Services,
        change: ChangeDataset,
        tags: list[TagDeclaration],
        batch: list[InstanceRecord],
        results: dict,
        state: _StudyState,
    ) -> list[InstanceRecord]:
        slots = asyncio.Semaphore(_INSTANCES_IN_FLIGHT)

        async def one(record: InstanceRecord) -> tuple[InstanceRecord, InstanceRecord] | str | None:
            async with slots:
                return await rewrite_instance(services, change, tags, record)

        rewritten = await asyncio.gather(*(one(record) for record in batch))
        changed = [outcome for outcome in rewritten if isinstance(outcome, tuple) and outcome[0] is not outcome[1]]
        replaced = dict(zip([new.key for new, _ in changed], await services.index.replace_instances(changed), strict=True))
        updated = []
        for record, outcome in zip(batch, rewritten, strict=True):
            if isinstance(outcome, tuple):
                new, previous = outcome
                # Stored again between the read and the entry's replacement: that version is updated, on its own.
                outcome = new if new is previous or replaced[new.key] else await update_instance(services, change, tags, new.key)
            if isinstance(outcome, str):
                _error(results, f"instance {record.key.sop} of study {record.key.study}: {outcome}")
                state.failed = True
            elif outcome is not None:
                updated.append(outcome)
                results["instanceUpdated"] += 1
        return updated

    async def completed(self, services: Services, operation: OperationRecord) -> None:
        """A bulk update in which a study failed is a failed operation; its results say which and why."""
        results = (operation.checkpoint or {}).get("results") or {}
        if results.get("studyFailed"):
            errors = results.get("errors") or []
            failed, processed = results["studyFailed"], results["studyProcessed"]
            raise OperationFailed(f"{failed} of {processed} studies were not updated whole: {errors[0]}")


def _copy_results(results: dict) -> dict:
    return {**results, "errors": list(results.get("errors", []))}


def _error(results: dict, message: str) -> None:
    if len(results["errors"]) < _ERRORS_KEPT:
        results["errors"].append(message)


async def update_instance(
    services: Services, change: ChangeDataset, tags: list[TagDeclaration], key: InstanceKey
) -> InstanceRecord | str | None:
    """Steps 1-4 of the module docstring for one instance, as it is now: its new record, None when it is not
    stored, or why it failed."""
    for _ in range(_ATTEMPTS):
        record = await services.index.get_instance(key)
        if record is None:
            return None
        rewritten = await rewrite_instance(services, change, tags, record)
        if not isinstance(rewritten, tuple):
            return rewritten
        new, previous = rewritten
        if new is previous or (await services.index.replace_instances([rewritten]))[0]:
            return new
    return f"it was stored again {_ATTEMPTS} times while it was updated; update the study again"


async def rewrite_instance(
    services: Services, change: ChangeDataset, tags: list[TagDeclaration], record: InstanceRecord
) -> tuple[InstanceRecord, InstanceRecord] | str | None:
    """Steps 1-3 for one instance: its new record and the one it replaces (both ``record`` when it has the new
    values already), None when it was deleted, or why it cannot be updated. The index entry is not written."""
    for _ in range(_ATTEMPTS):
        try:
            first_frame = min((offset for frame in record.frame_ranges or [] for offset, _ in frame), default=None)
            header = await read_header(services.lake, record.path, first_frame)
        except FileMissing:
            return None  # deleted meanwhile: nothing to update
        except HeaderTooLarge as error:
            return str(error)
        file, etag = header.file, record.etag.strip('"')
        original = record.original_path or services.layout.original_path(record.key)
        if file.etag == record.etag:
            rewritten = await asyncio.to_thread(_rewrite, header.data, change, record.transfer_syntax, file.size)
            if rewritten is None:
                return record, record  # it has the new values already: a step redone, or nothing to change
            if record.original_path is None:
                await services.lake.copy(record.path, original)
            shift = len(rewritten.data) - len(header.data)
            try:
                written = await services.lake.splice(
                    record.path, rewritten.data, len(header.data), file.size - len(header.data), etag=file.etag,
                    metadata={UPDATED_FROM: etag, OFFSET_SHIFT: str(shift)},
                )  # fmt: skip
            except FileChanged:
                record = await services.index.get_instance(record.key)  # stored again meanwhile: update that version
                if record is None:
                    return None
                continue
            character_set = rewritten.character_set
        elif header.blob_metadata.get(UPDATED_FROM) == etag:
            # Written by a step cut off before the index entry: finish that one.
            written, shift = file, int(header.blob_metadata[OFFSET_SHIFT])
            character_set = await asyncio.to_thread(character_set_of, header.data)
        else:
            return (
                f"its file {record.path} was modified in the lake outside the API; reconcile it "
                "(python -m dicom_core reindex) and update the study again"
            )
        return updated_record(record, change, tags, written, shift, original, character_set), record
    return f"it was stored again {_ATTEMPTS} times while it was updated; update the study again"


def _rewrite(head: bytes, change: ChangeDataset, transfer_syntax: str, size: int) -> RewrittenHeader | None:
    """The new header (the new file, for a deflated data set); None when ``head`` has the new values already."""
    rewritten = rewrite_file(head, change) if transfer_syntax in DEFLATED_SYNTAXES else rewrite_header(head, change)
    return None if rewritten.data == head else rewritten


def effective_elements(change: ChangeDataset, character_set: dict | None) -> dict[str, dict]:
    """What changed in an instance: the change, and its Specific Character Set when values needed a new one."""
    if character_set is None or change.ascii_only:
        return dict(change.elements)
    return {**change.elements, SPECIFIC_CHARACTER_SET: character_set}


def updated_record(
    record: InstanceRecord,
    change: ChangeDataset,
    tags: list[TagDeclaration],
    written: LakeFile,
    shift: int,
    original: str,
    character_set: dict | None,
) -> InstanceRecord:
    """The index record of ``record`` rewritten as ``written``: frames ``shift`` bytes on, the changed values in its JSON."""
    elements = effective_elements(change, character_set)
    metadata = None
    if record.metadata_json is not None:
        metadata = json.dumps(json.loads(record.metadata_json) | elements, separators=(",", ":")).encode()
    extended = extended_values(elements, tags)[0][Level.INSTANCE]
    frames = None
    if record.frame_ranges is not None:
        frames = [[(offset + shift, length) for offset, length in frame] for frame in record.frame_ranges]
    return replace(
        record,
        size=written.size,
        etag=written.etag,
        frame_ranges=frames,
        metadata_json=metadata,
        attributes=record.attributes | level_json(elements, INSTANCE_TAGS) | extended,
        original_path=original,
        cached=False,
    )


async def _update_levels(
    services: Services, change: ChangeDataset, tags: list[TagDeclaration], partition: str, study: str
) -> None:
    """The study entity, and its series when a series-level value changed, take the new values; lookups follow."""
    elements = effective_elements(change, {"vr": "CS", "Value": ["ISO_IR 192"]})
    extended = extended_values(elements, tags)[0]
    study_elements = level_json(elements, STUDY_TAGS) | extended[Level.STUDY]
    await services.index.add_attributes(Level.STUDY, partition, (study,), study_elements, move_lookups=True)
    series_elements = level_json(elements, SERIES_TAGS) | extended[Level.SERIES]
    if series_elements:
        async for series in services.index.children(Level.SERIES, partition, study):
            path = (study, series.series)
            await services.index.add_attributes(Level.SERIES, partition, path, series_elements, move_lookups=True)
