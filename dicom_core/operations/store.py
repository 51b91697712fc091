"""STOW-RS: store instances (PS3.18 10.5) and report each outcome (PS3.18 Annex I).

Each instance succeeds or fails on its own. The sequence for one instance is:
parse and validate the header, zero the preamble, write the file atomically at
its contract path (create-only for POST, replace for PUT), then write its index
entity. The study and series entities (counts, modalities, attributes) are
updated once per series per request, after its instances are in.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from azure.core.exceptions import AzureError, HttpResponseError

from dicom_core.dicom.json_model import instance_json
from dicom_core.dicom.levels import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS, level_json
from dicom_core.dicom.parse import PREAMBLE_LENGTH, InvalidInstance, ParsedInstance, parse_instance, pydicom_lock
from dicom_core.errors import StorageUnavailable
from dicom_core.services import Services
from dicom_core.storage.index import InstanceRecord, LevelUpdate
from dicom_core.storage.lake import InstanceExists, describe_storage_error
from dicom_core.storage.layout import InstanceKey

logger = logging.getLogger(__name__)

# Failure reasons (FailureReason 0008,1197), as the Azure DICOM service numbers them
# where it defines one, PS3.4 Annex B otherwise.
PROCESSING_FAILURE = 272  # 0x0110
OUT_OF_RESOURCES = 42752  # 0xA700, the instance is larger than the configured maximum
VALIDATION_FAILED = 43264  # 0xA900
STUDY_UID_MISMATCH = 43265  # 0xA901
CANNOT_UNDERSTAND = 49152  # 0xC000: not a DICOM Part 10 file, or not an application/dicom part
INSTANCE_EXISTS = 45070


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
        """200 all stored, 202 some stored, 409 none stored (design.md, Error model)."""
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
    tasks: list[asyncio.Task] = []

    async def run(part: ReceivedPart) -> tuple[InstanceOutcome, LevelUpdate | None]:
        try:
            return await _store_one(services, request, part)
        finally:
            part.file.close()
            slots.release()

    try:
        async for part in parts:
            await slots.acquire()  # back-pressure: read the next part only when a slot is free
            tasks.append(asyncio.create_task(run(part)))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    results = await asyncio.gather(*tasks)
    outcomes = [outcome for outcome, _ in results]
    result = StoreResult(outcomes)
    updates = [update for _, update in results if update is not None]
    try:
        await _record_levels(services, updates)
    except (AzureError, RuntimeError) as error:
        raise StorageUnavailable(_storage_message("updating the study and series index entries", error)) from error

    storage_failures = [o for o in outcomes if o.failure_reason == PROCESSING_FAILURE]
    if storage_failures and len(storage_failures) == len(outcomes):
        raise StorageUnavailable(f"no instance was stored: {storage_failures[0].message}")
    studies = {outcome.study_uid for outcome in result.stored}
    study = request.study_uid or (studies.pop() if len(studies) == 1 else None)
    if study and result.stored:
        result.study_retrieve_url = f"{request.base_url}/studies/{study}"
    return result


async def _record_levels(services: Services, updates: list[LevelUpdate]) -> None:
    """One series/study entity change per series touched; studies in parallel, series of a study in turn."""
    merged: dict[tuple[str, str, str], LevelUpdate] = {}
    for update in updates:
        key = (update.partition, update.study, update.series)
        previous = merged.get(key)
        if previous is not None:
            update = LevelUpdate(
                update.partition,
                update.study,
                update.series,
                previous.instances_added + update.instances_added,
                update.modality,
                update.study_attributes,
                update.series_attributes,
            )
        merged[key] = update
    by_study: dict[tuple[str, str], list[LevelUpdate]] = defaultdict(list)
    for (partition, study, _), update in merged.items():
        by_study[(partition, study)].append(update)

    async def record_study(study_updates: list[LevelUpdate]) -> None:
        for update in study_updates:
            await services.index.record_stored(update)

    await asyncio.gather(*(record_study(study_updates) for study_updates in by_study.values()))


async def _store_one(services: Services, request: StoreRequest, part: ReceivedPart) -> tuple[InstanceOutcome, LevelUpdate | None]:
    if part.refusal is not None:
        reason, message = part.refusal
        return InstanceOutcome(failure_reason=reason, message=message), None
    if part.media_type != "application/dicom":
        return InstanceOutcome(
            failure_reason=CANNOT_UNDERSTAND,
            message=f"part has media type {part.media_type or '(none)'}; expected application/dicom",
        ), None
    try:
        prepared = await asyncio.to_thread(_prepare, part)
    except InvalidInstance as invalid:
        reason = CANNOT_UNDERSTAND if "Part 10" in str(invalid) or "cannot be parsed" in str(invalid) else VALIDATION_FAILED
        return InstanceOutcome(failure_reason=reason, message=str(invalid)), None
    parsed = prepared.parsed
    outcome = InstanceOutcome(sop_class_uid=parsed.sop_class_uid, sop_instance_uid=parsed.sop_uid, study_uid=parsed.study_uid)
    if request.study_uid and parsed.study_uid != request.study_uid:
        outcome.failure_reason = STUDY_UID_MISMATCH
        outcome.message = f"StudyInstanceUID {parsed.study_uid} differs from the study in the URL"
        return outcome, None

    key = InstanceKey(request.partition, parsed.study_uid, parsed.series_uid, parsed.sop_uid)
    path = services.layout.instance_path(key)
    try:
        try:
            part.file.seek(0)
            written = await services.lake.write(path, part.file, part.size, overwrite=False)
        except InstanceExists:
            if not request.upsert:
                outcome.failure_reason = INSTANCE_EXISTS
                outcome.message = "an instance with these UIDs is already stored; use PUT to replace it"
                return outcome, None
            part.file.seek(0)
            written = await services.lake.write(path, part.file, part.size, overwrite=True)
            outcome.replaced = True
        await services.index.put_instance(
            InstanceRecord(
                key=key,
                sop_class_uid=parsed.sop_class_uid,
                path=path,
                size=part.size,
                etag=written.etag,
                transfer_syntax=parsed.transfer_syntax,
                number_of_frames=parsed.number_of_frames,
                frame_ranges=parsed.frame_ranges,
                metadata=prepared.metadata,
                attributes=prepared.instance_attributes,
            )
        )
    except (AzureError, OSError) as error:
        logger.exception("storing an instance failed", extra={"partition": request.partition})
        outcome.failure_reason = PROCESSING_FAILURE
        outcome.message = _storage_message("storing the instance", error)
        return outcome, None

    outcome.retrieve_url = f"{request.base_url}/studies/{key.study}/series/{key.series}/instances/{key.sop}"
    update = LevelUpdate(
        partition=request.partition,
        study=key.study,
        series=key.series,
        instances_added=0 if outcome.replaced else 1,
        modality=str(parsed.dataset.get("Modality", "") or ""),
        study_attributes=prepared.study_attributes,
        series_attributes=prepared.series_attributes,
    )
    return outcome, update


@dataclass
class _Prepared:
    parsed: ParsedInstance
    metadata: dict
    study_attributes: dict
    series_attributes: dict
    instance_attributes: dict


def _prepare(part: ReceivedPart) -> _Prepared:
    """Parse and validate the part, build what the index keeps, and zero the preamble (blocking)."""
    with pydicom_lock:
        parsed = parse_instance(part.file, part.size)
        dataset = parsed.dataset
        prepared = _Prepared(
            parsed=parsed,
            metadata=instance_json(dataset, parsed.pixel_data_vr),
            study_attributes=level_json(dataset, STUDY_TAGS),
            series_attributes=level_json(dataset, SERIES_TAGS),
            instance_attributes=level_json(dataset, INSTANCE_TAGS),
        )
    # The preamble can carry an executable (DICOM/PE polyglots, CVE-2019-11687): never store it.
    part.file.seek(0)
    part.file.write(bytes(PREAMBLE_LENGTH))
    return prepared


def _storage_message(doing: str, error: Exception) -> str:
    if isinstance(error, HttpResponseError):
        return f"{doing} failed: {describe_storage_error(error)}"
    return f"{doing} failed: the storage service could not be reached ({type(error).__name__})"
