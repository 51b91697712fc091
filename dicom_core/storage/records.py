"""What the index keeps, as typed records: the adapters return these, never table entities.

Column names and encodings (compressed JSON, frame ranges, counts as properties) stay
inside storage/; operations see only these fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dicom_core.dicom.extended_tags import TagDeclaration
from dicom_core.dicom.parse import ByteRange
from dicom_core.storage.layout import InstanceKey

_INSTANCE_NUMBER = "00200013"
_ROWS = "00280010"


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one instance: retrieve needs no file read to plan.

    ``metadata_json`` is the instance's DICOM JSON (PS3.18 F.2) with bulk data as relative
    ``bulkdata/...`` URIs; None when it was too large for the index, or not asked for.
    ``version`` changes whenever the index entry is written (its ETag); "" for a record not read back.
    """

    key: InstanceKey
    sop_class_uid: str
    path: str
    size: int
    etag: str
    transfer_syntax: str
    number_of_frames: int
    frame_ranges: list[list[ByteRange]] | None
    metadata_json: bytes | None
    attributes: dict
    stored_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    version: str = ""
    reconciliation_needed: str | None = None
    """Why a retrieve found the file changed outside the API (set by ``Index.flag_for_reconciliation``)."""
    original_path: str | None = None
    """Where the instance as first received is kept, once a bulk update changed it (docs/bulk-update.md)."""
    cached: bool = False
    """Served from this process's cache of instance records (``Index.cached_instance``), not read
    from the index for this request: only a read of the file conditional on ``etag`` proves it current."""

    @property
    def metadata(self) -> dict | None:
        return json.loads(self.metadata_json) if self.metadata_json else None

    @property
    def has_image(self) -> bool:
        """Whether the instance has pixel rows, i.e. something to render (Rows, 0028,0010)."""
        return _ROWS in self.attributes

    @property
    def instance_number(self) -> int | None:
        number = (self.attributes.get(_INSTANCE_NUMBER) or {}).get("Value", [None])[0]
        return number if isinstance(number, int) else None


@dataclass(frozen=True)
class SeriesRecord:
    """A series: its attributes (dicom/levels.py SERIES_TAGS) and how many instances it has."""

    partition: str
    study: str
    series: str
    modality: str
    attributes: dict
    instance_count: int
    version: str = ""


@dataclass(frozen=True)
class StudyRecord:
    """A study: its attributes (STUDY_TAGS), its counts and how many of its series have each modality."""

    partition: str
    study: str
    attributes: dict
    series_count: int
    instance_count: int
    modality_counts: Mapping[str, int]
    version: str = ""

    @property
    def modalities(self) -> list[str]:
        """ModalitiesInStudy (0008,0061): the modalities of its series, sorted."""
        return sorted(modality for modality, count in self.modality_counts.items() if count > 0)


LevelRecord = StudyRecord | SeriesRecord | InstanceRecord


@dataclass(frozen=True)
class LevelUpdate:
    """What one store saw of a series and its study: the attributes their entities keep."""

    partition: str
    study: str
    series: str
    modality: str
    study_attributes: dict
    series_attributes: dict


@dataclass(frozen=True)
class ExtendedQueryTagRecord:
    """An extended query tag in the registry: its declaration, its status and its reindex operation.

    ``status`` is Adding (its reindex runs), Ready (searchable) or Deleting (its entries are
    being removed); ``query_status`` Enabled or Disabled (Azure DICOM v2). ``has_errors``: some
    instance's value did not fit the VR (the rows are in the errors table).
    """

    declaration: TagDeclaration
    status: str
    query_status: str
    operation_id: str | None
    has_errors: bool = False
    version: str = ""

    @property
    def searchable(self) -> bool:
        return self.status == "Ready" and self.query_status == "Enabled"


@dataclass(frozen=True)
class TagErrorRecord:
    """An instance whose value of an extended query tag does not fit the tag's VR."""

    path: str
    key: InstanceKey
    message: str
    created: datetime


@dataclass(frozen=True)
class OperationRecord:
    """A long-running operation (docs/operations.md): its public state, its checkpoint and its lease.

    ``checkpoint`` and ``parameters`` are the handler's own JSON; ``lease_owner`` holds the
    operation until ``lease_until``; ``version`` is the ETag every write of it is conditional on.
    """

    id: str
    type: str
    status: str  # notStarted, running, completed, failed
    created: datetime
    updated: datetime
    percent_complete: int = 0
    resources: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    parameters: dict = field(default_factory=dict)
    checkpoint: dict | None = None
    done: int = 0
    total: int = 0
    lease_owner: str | None = None
    lease_until: datetime | None = None
    version: str = ""
