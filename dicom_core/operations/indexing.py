"""What the index keeps about an instance file, built the same way by store and reconcile.

Store describes the part it received before writing it; reconcile describes a file
it found in the lake. Both turn the description into the instance entity's record
and the change to its series and study (``index_entries``). The level JSON holds,
beyond the level's own attributes, the values of the extended query tags being
indexed (Adding or Ready), each under its declared VR; values that do not fit it are
the tag's errors (``tag_errors``), as Azure records them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from dicom_core.dicom.extended_tags import TagDeclaration, tag_value
from dicom_core.dicom.json_model import instance_json
from dicom_core.dicom.levels import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS, Level, level_json
from dicom_core.dicom.parse import ParsedInstance, parse_instance, pydicom_lock
from dicom_core.dicom.structure import StructureLimits
from dicom_core.settings import Limits
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import InstanceRecord, LevelUpdate


@dataclass
class DescribedInstance:
    """A parsed, validated instance and the DICOM JSON the index keeps of it."""

    parsed: ParsedInstance
    modality: str
    metadata_json: bytes  # the DICOM JSON, encoded where it was parsed (a worker process or thread)
    study_attributes: dict
    series_attributes: dict
    instance_attributes: dict
    tag_errors: list[tuple[str, str]] = field(default_factory=list)  # (tag, why its value does not fit its VR)

    @functools.cached_property
    def metadata(self) -> dict:
        """The DICOM JSON as a dict, decoded when asked for. Not a field: a description crosses from a worker
        process pickled, and a CT's thousand-object dict took 0.7 ms of the server's CPU to unpickle, against
        0.08 ms for all the rest; a store never asks for it."""
        return json.loads(self.metadata_json)


def structure_limits(limits: Limits) -> StructureLimits:
    return StructureLimits(limits.max_elements, limits.max_inflated_bytes)


def describe_instance(
    file: BinaryIO, size: int, limits: StructureLimits, tags: Sequence[TagDeclaration] = ()
) -> DescribedInstance:
    """Parse and validate a Part 10 file and build its DICOM JSON (blocking; raises InvalidInstance)."""
    with pydicom_lock:
        dataset, parsed = parse_instance(file, size, limits)
        metadata = instance_json(dataset, parsed.pixel_data_vr)
        modality = str(dataset.get("Modality", "") or "")
    values, errors = extended_values(metadata, tags)
    return DescribedInstance(
        parsed=parsed,
        modality=modality,
        metadata_json=json.dumps(metadata, separators=(",", ":")).encode(),
        study_attributes=level_json(metadata, STUDY_TAGS) | values[Level.STUDY],
        series_attributes=level_json(metadata, SERIES_TAGS) | values[Level.SERIES],
        instance_attributes=level_json(metadata, INSTANCE_TAGS) | values[Level.INSTANCE],
        tag_errors=errors,
    )


def extended_values(metadata: dict, tags: Sequence[TagDeclaration]) -> tuple[dict[Level, dict], list[tuple[str, str]]]:
    """The elements of ``tags`` in an instance's DICOM JSON, by level, and the (tag, problem) of values that do not fit."""
    values: dict[Level, dict] = {level: {} for level in Level}
    errors: list[tuple[str, str]] = []
    for declared in tags:
        found = tag_value(declared, metadata)
        if found.problem is not None:
            errors.append((declared.path, found.problem))
        elif found.element is not None:
            values[declared.level][declared.path] = found.element
    return values, errors


def index_entries(
    described: DescribedInstance, key: InstanceKey, path: str, size: int, etag: str
) -> tuple[InstanceRecord, LevelUpdate]:
    """The instance entity's record and what the series and study entities keep of a file at ``path``."""
    parsed = described.parsed
    record = InstanceRecord(
        key=key,
        sop_class_uid=parsed.sop_class_uid,
        path=path,
        size=size,
        etag=etag,
        transfer_syntax=parsed.transfer_syntax,
        number_of_frames=parsed.number_of_frames,
        frame_ranges=parsed.frame_ranges,
        metadata_json=described.metadata_json,
        attributes=described.instance_attributes,
    )
    update = LevelUpdate(
        partition=key.partition,
        study=key.study,
        series=key.series,
        modality=described.modality,
        study_attributes=described.study_attributes,
        series_attributes=described.series_attributes,
    )
    return record, update
