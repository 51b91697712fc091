"""The index adapter: study, series and instance entities in Azure Table Storage.

Table Storage indexes only PartitionKey and RowKey, so every lookup here is a
point read or a key-range scan (docs/index-design.md):

==========  ==============================  ======================
table       PartitionKey                    RowKey
==========  ==============================  ======================
studies     ``{partition}``                 ``{study}``
series      ``{partition}|{study}``         ``{series}``
instances   ``{partition}|{study}``         ``{series}|{sop}``
==========  ==============================  ======================

Instances of a study share a PartitionKey, so "instances of a study/series" is a
single-partition range. Counts that searches return (related series and
instances, modalities in study) live on the study and series entities and are
changed with ETag optimistic concurrency, so concurrent stores and deletes keep
them exact.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from dicom_core.storage.layout import InstanceKey

_SEPARATOR = "|"
_MAX_BINARY = 64 * 1024  # Table Storage's limit for one binary property
_CONCURRENCY_RETRIES = 50


@dataclass
class IndexStatistics:
    """What the index adapter asked of Table Storage; tests and benchmarks read it."""

    requests: int = 0
    entities_read: int = 0

    def reset(self) -> None:
        self.requests = 0
        self.entities_read = 0


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one instance: retrieve needs no file read to plan."""

    key: InstanceKey
    sop_class_uid: str
    path: str
    size: int
    etag: str
    transfer_syntax: str
    number_of_frames: int
    frame_ranges: list[list[tuple[int, int]]] | None
    metadata: dict | None
    attributes: dict
    stored_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class LevelUpdate:
    """The change one store request makes to a series: instances added, attributes seen."""

    partition: str
    study: str
    series: str
    instances_added: int
    modality: str
    study_attributes: dict
    series_attributes: dict


def study_partition_key(partition: str, study: str) -> str:
    return f"{partition}{_SEPARATOR}{study}"


def instance_row_key(series: str, sop: str) -> str:
    return f"{series}{_SEPARATOR}{sop}"


def encode_frame_ranges(ranges: list[list[tuple[int, int]]] | None) -> bytes | None:
    """Frame byte ranges as compact compressed JSON, or None when too large for one property."""
    if ranges is None:
        return None
    encoded = zlib.compress(json.dumps(ranges, separators=(",", ":")).encode())
    return encoded if len(encoded) <= _MAX_BINARY else None


def decode_frame_ranges(value: bytes | None) -> list[list[tuple[int, int]]] | None:
    if not value:
        return None
    return [[(offset, length) for offset, length in frame] for frame in json.loads(zlib.decompress(value))]


def encode_json(value: dict | None) -> bytes | None:
    if value is None:
        return None
    encoded = zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 1)
    return encoded if len(encoded) <= _MAX_BINARY else None


def decode_json(value: bytes | None) -> dict | None:
    return json.loads(zlib.decompress(value)) if value else None


def instance_entity(record: InstanceRecord) -> dict[str, Any]:
    """The instances-table entity of ``record``."""
    key = record.key
    entity: dict[str, Any] = {
        "PartitionKey": study_partition_key(key.partition, key.study),
        "RowKey": instance_row_key(key.series, key.sop),
        "PartitionName": key.partition,
        "StudyInstanceUID": key.study,
        "SeriesInstanceUID": key.series,
        "SOPInstanceUID": key.sop,
        "SOPClassUID": record.sop_class_uid,
        "Path": record.path,
        "Size": record.size,
        "ETag": record.etag,
        "TransferSyntaxUID": record.transfer_syntax,
        "NumberOfFrames": record.number_of_frames,
        "StoredAt": record.stored_at,
        "Attributes": json.dumps(record.attributes, separators=(",", ":")),
    }
    frame_ranges = encode_frame_ranges(record.frame_ranges)
    if frame_ranges is not None:
        entity["FrameRanges"] = frame_ranges
    metadata = encode_json(record.metadata)
    if metadata is not None:
        entity["Metadata"] = metadata
    return entity


def entity_size(entity: dict[str, Any]) -> int:
    """An upper bound of the entity's size on the wire (binary goes as base64)."""
    return 1024 + sum(len(value) * 4 // 3 + 64 for value in entity.values() if isinstance(value, str | bytes))


class Index:
    """Study, series and instance entities in tables named ``{prefix}studies`` and so on."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        self._service = service
        self.studies: TableClient = service.get_table_client(f"{table_prefix}studies")
        self.series: TableClient = service.get_table_client(f"{table_prefix}series")
        self.instances: TableClient = service.get_table_client(f"{table_prefix}instances")
        self.statistics = IndexStatistics()

    async def close(self) -> None:
        await self._service.close()

    async def prepare(self) -> None:
        for table in (self.studies, self.series, self.instances):
            with contextlib.suppress(ResourceExistsError):
                await table.create_table()

    # -- instances ---------------------------------------------------------------------------

    async def get_instance(self, key: InstanceKey) -> dict | None:
        """The instance entity, or None."""
        self.statistics.requests += 1
        try:
            entity = await self.instances.get_entity(
                study_partition_key(key.partition, key.study), instance_row_key(key.series, key.sop)
            )
        except ResourceNotFoundError:
            return None
        self.statistics.entities_read += 1
        return entity

    async def put_instance(self, record: InstanceRecord) -> None:
        """Create or replace one instance entity."""
        self.statistics.requests += 1
        await self.instances.upsert_entity(instance_entity(record), mode=UpdateMode.REPLACE)

    async def put_instances(self, entities: list[dict]) -> None:
        """Create or replace instance entities of one study in one transaction (at most 100, under 4 MiB)."""
        self.statistics.requests += 1
        await self.instances.submit_transaction([("upsert", entity, {"mode": UpdateMode.REPLACE}) for entity in entities])

    async def instances_of_study(self, partition: str, study: str, series: str | None = None) -> AsyncIterator[dict]:
        """Instance entities of a study (or of one series of it), by key range."""
        pk = study_partition_key(partition, study)
        if series is None:
            query, parameters = "PartitionKey eq @pk", {"pk": pk}
        else:
            query = "PartitionKey eq @pk and RowKey gt @low and RowKey lt @high"
            parameters = {"pk": pk, "low": f"{series}{_SEPARATOR}", "high": f"{series}{chr(ord(_SEPARATOR) + 1)}"}
        self.statistics.requests += 1
        async for entity in self.instances.query_entities(query, parameters=parameters):
            self.statistics.entities_read += 1
            yield entity

    # -- studies and series ------------------------------------------------------------------

    async def get_study(self, partition: str, study: str) -> dict | None:
        return await self._get(self.studies, partition, study)

    async def get_series(self, partition: str, study: str, series: str) -> dict | None:
        return await self._get(self.series, study_partition_key(partition, study), series)

    async def _get(self, table: TableClient, pk: str, rk: str) -> dict | None:
        self.statistics.requests += 1
        try:
            entity = await table.get_entity(pk, rk)
        except ResourceNotFoundError:
            return None
        self.statistics.entities_read += 1
        return entity

    async def record_stored(self, update: LevelUpdate) -> None:
        """Apply what a store request added to one series to its series and study entities."""
        series_created = await self._change(
            self.series,
            study_partition_key(update.partition, update.study),
            update.series,
            lambda entity: _apply_series(entity, update),
        )
        await self._change(
            self.studies,
            update.partition,
            update.study,
            lambda entity: _apply_study(entity, update, series_created),
        )

    async def _change(self, table: TableClient, pk: str, rk: str, mutate: Callable[[dict], None]) -> bool:
        """Read-modify-write one entity under ETag concurrency; True when it was created."""
        for _ in range(_CONCURRENCY_RETRIES):
            current = await self._get(table, pk, rk)
            entity = dict(current) if current is not None else {"PartitionKey": pk, "RowKey": rk}
            mutate(entity)
            self.statistics.requests += 1
            try:
                if current is None:
                    await table.create_entity(entity)
                    return True
                await table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return False
            except (ResourceExistsError, ResourceModifiedError):
                continue  # another writer got there first: read again
        raise RuntimeError(f"gave up updating {table.table_name} entity {pk}/{rk} after {_CONCURRENCY_RETRIES} conflicts")


def _apply_series(entity: dict, update: LevelUpdate) -> None:
    entity.update(
        PartitionName=update.partition,
        StudyInstanceUID=update.study,
        SeriesInstanceUID=update.series,
        Modality=update.modality,
        Attributes=json.dumps(update.series_attributes, separators=(",", ":")),
        NumberOfSeriesRelatedInstances=entity.get("NumberOfSeriesRelatedInstances", 0) + update.instances_added,
        UpdatedAt=datetime.now(UTC),
    )


def _apply_study(entity: dict, update: LevelUpdate, series_created: bool) -> None:
    modalities = json.loads(entity.get("ModalityCounts", "{}"))
    if series_created and update.modality:
        modalities[update.modality] = modalities.get(update.modality, 0) + 1
    entity.update(
        PartitionName=update.partition,
        StudyInstanceUID=update.study,
        Attributes=json.dumps(update.study_attributes, separators=(",", ":")),
        NumberOfStudyRelatedSeries=entity.get("NumberOfStudyRelatedSeries", 0) + (1 if series_created else 0),
        NumberOfStudyRelatedInstances=entity.get("NumberOfStudyRelatedInstances", 0) + update.instances_added,
        ModalityCounts=json.dumps(modalities, sort_keys=True),
        UpdatedAt=datetime.now(UTC),
    )
