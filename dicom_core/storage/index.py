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

from dicom_core.dicom.query import Level
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.lookup import Lookup, instance_entries, level_entries, study_entries

_SEPARATOR = "|"
_MAX_BINARY = 64 * 1024  # Table Storage's limit for one binary property
_CONCURRENCY_RETRIES = 50
_APPLIED_DELETES_KEPT = 50  # delete jobs a study or series entity remembers, so a resumed delete counts once
_SWEEP_PROPERTIES = ["PartitionKey", "RowKey", "PartitionName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Path"]


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


def instance_key_columns(key: InstanceKey) -> dict[str, str]:
    """The keys and identifying columns of an instance's entity in the instances table (or a table keyed alike)."""
    return {
        "PartitionKey": study_partition_key(key.partition, key.study),
        "RowKey": instance_row_key(key.series, key.sop),
        "PartitionName": key.partition,
        "StudyInstanceUID": key.study,
        "SeriesInstanceUID": key.series,
        "SOPInstanceUID": key.sop,
    }


def instance_entity(record: InstanceRecord) -> dict[str, Any]:
    """The instances-table entity of ``record``."""
    key = record.key
    entity: dict[str, Any] = {
        **instance_key_columns(key),
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


def _key_of(entity: dict[str, Any]) -> InstanceKey:
    return InstanceKey(entity["PartitionName"], entity["StudyInstanceUID"], entity["SeriesInstanceUID"], entity["SOPInstanceUID"])


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
        self.lookup = Lookup(service, table_prefix, self.statistics)

    async def close(self) -> None:
        await self._service.close()

    async def prepare(self) -> None:
        for table in (self.studies, self.series, self.instances):
            with contextlib.suppress(ResourceExistsError):
                await table.create_table()
        await self.lookup.prepare()

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

    async def put_instance(self, record: InstanceRecord, *, create: bool = False) -> bool:
        """Create or replace one instance entity; True when it was created.

        With ``create``, the entity is created when absent and replaced otherwise, and
        the result tells which: only the writer that created it counts the instance.
        """
        entity = instance_entity(record)
        await self.lookup.put(instance_entries(entity))  # first: an entity is never visible without its entries
        if create:
            self.statistics.requests += 1
            try:
                await self.instances.create_entity(entity)
                return True
            except ResourceExistsError:
                pass
        self.statistics.requests += 1
        await self.instances.upsert_entity(entity, mode=UpdateMode.REPLACE)
        return False

    async def put_instances(self, entities: list[dict], *, create: set[InstanceKey] | frozenset = frozenset()) -> None:
        """Create or replace instance entities of one study in one transaction (at most 100, under 4 MiB).

        Entities of the keys in ``create`` are create-only: the transaction fails when one exists.
        """
        await self.lookup.put(entry for entity in entities for entry in instance_entries(entity))
        self.statistics.requests += 1
        await self.instances.submit_transaction(
            [
                ("create", entity) if _key_of(entity) in create else ("upsert", entity, {"mode": UpdateMode.REPLACE})
                for entity in entities
            ]
        )

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

    async def _get(self, table: TableClient, pk: str, rk: str, select: list[str] | None = None) -> dict | None:
        self.statistics.requests += 1
        try:
            entity = await table.get_entity(pk, rk, select=select)
        except ResourceNotFoundError:
            return None
        self.statistics.entities_read += 1
        return entity

    # -- searches (operations/search.py): point reads and key ranges, every request counted ----------

    def table_of(self, level: Level) -> TableClient:
        return (self.studies, self.series, self.instances)[level]

    async def read(self, level: Level, pk: str, rk: str, select: list[str] | None = None) -> dict | None:
        """One study, series or instance entity by its keys (a point read), or None."""
        return await self._get(self.table_of(level), pk, rk, select)

    def children(
        self, level: Level, pk: str, series: str | None = None, *, select: list[str] | None = None, page_size: int = 1000
    ) -> AsyncIterator[dict]:
        """The entities of one PartitionKey (series or instances of a study), or of one series in it (its instances)."""
        query, parameters = "PartitionKey eq @pk", {"pk": pk}
        if series is not None:
            query += " and RowKey gt @low and RowKey lt @high"
            parameters |= {"low": f"{series}{_SEPARATOR}", "high": f"{series}{chr(ord(_SEPARATOR) + 1)}"}
        return self._pages(self.table_of(level), query, parameters, select, page_size)

    def in_partition(
        self, level: Level, partition: str, *, select: list[str] | None = None, page_size: int = 1000
    ) -> AsyncIterator[dict]:
        """Every entity of a level in one DICOM partition, in key order (a PartitionKey range below the study level)."""
        if level == Level.STUDY:
            query, parameters = "PartitionKey eq @pk", {"pk": partition}
        else:
            query = "PartitionKey ge @low and PartitionKey lt @high"
            parameters = {"low": f"{partition}{_SEPARATOR}", "high": f"{partition}{chr(ord(_SEPARATOR) + 1)}"}
        return self._pages(self.table_of(level), query, parameters, select, page_size)

    async def _pages(
        self, table: TableClient, query: str, parameters: dict, select: list[str] | None, page_size: int
    ) -> AsyncIterator[dict]:
        pages = table.query_entities(
            query, parameters=parameters, select=select, results_per_page=min(max(page_size, 1), 1000)
        ).by_page()
        async for page in pages:
            self.statistics.requests += 1
            async for entity in page:
                self.statistics.entities_read += 1
                yield entity

    async def record_stored(self, update: LevelUpdate) -> None:
        """Apply what a store request added to one series to its series and study entities.

        The lookup entries of both go first, so a study or series is never visible without
        them; an entry left by a failure in between is stale, and searches verify entries.
        """
        await self.lookup.put(
            study_entries(update.partition, update.study, update.study_attributes, update.modality)
            + level_entries(update.partition, Level.SERIES, (update.study, update.series), update.series_attributes)
        )
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

    # -- deletes (operations/delete.py) --------------------------------------------------------

    async def all_instances(self, partition: str | None = None) -> AsyncIterator[dict]:
        """Every instance entity (of one partition: a PartitionKey range); for reindex, never for a request."""
        if partition is None:
            entities = self.instances.list_entities(select=_SWEEP_PROPERTIES)
        else:
            query = "PartitionKey ge @low and PartitionKey lt @high"
            bounds = {"low": f"{partition}{_SEPARATOR}", "high": f"{partition}{chr(ord(_SEPARATOR) + 1)}"}
            entities = self.instances.query_entities(query, parameters=bounds, select=_SWEEP_PROPERTIES)
        async for entity in entities:
            yield entity

    async def delete_instance(self, key: InstanceKey) -> None:
        """Remove one instance entity (no error when it is gone already)."""
        self.statistics.requests += 1
        await self.instances.delete_entity(study_partition_key(key.partition, key.study), instance_row_key(key.series, key.sop))

    async def record_deleted(self, partition: str, study: str, series: str, removed: int, job: str) -> None:
        """Take ``removed`` instances of delete ``job`` off the series and study counts, once per job.

        Each entity remembers the jobs it applied, so a delete resumed after an outage
        never decrements twice. A series left without instances is removed, and with
        it one series of its modality from the study (ModalitiesInStudy); a study left
        without series is removed.
        """
        series_key = study_partition_key(partition, study)
        modality = await self._decrement(self.series, series_key, series, job, {"NumberOfSeriesRelatedInstances": removed})
        series_gone = modality is not None or await self.get_series(partition, study, series) is None
        changes = {"NumberOfStudyRelatedInstances": removed, "NumberOfStudyRelatedSeries": 1 if series_gone else 0}
        await self._decrement(self.studies, partition, study, f"{job}|{series}", changes, modality or "")

    async def _decrement(
        self, table: TableClient, pk: str, rk: str, job: str, amounts: dict[str, int], modality: str = ""
    ) -> str | None:
        """Subtract ``amounts`` once per ``job`` under ETag concurrency; delete the entity when its first count hits 0.

        Returns the Modality of a deleted entity ("" when it had none), None when it remains or never existed.
        """
        for _ in range(_CONCURRENCY_RETRIES):
            current = await self._get(table, pk, rk)
            applied = json.loads(current.get("AppliedDeletes", "[]")) if current is not None else []
            if current is None or job in applied:
                return None
            entity = dict(current)
            for name, amount in amounts.items():
                entity[name] = max(entity.get(name, 0) - amount, 0)
            if modality and amounts.get("NumberOfStudyRelatedSeries"):
                modalities = json.loads(entity.get("ModalityCounts", "{}"))
                modalities[modality] = modalities.get(modality, 0) - 1
                entity["ModalityCounts"] = json.dumps({m: n for m, n in modalities.items() if n > 0}, sort_keys=True)
            entity["AppliedDeletes"] = json.dumps([*applied, job][-_APPLIED_DELETES_KEPT:])
            entity["UpdatedAt"] = datetime.now(UTC)
            conditions = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
            self.statistics.requests += 1
            try:
                if entity[next(iter(amounts))] <= 0:
                    await table.delete_entity(pk, rk, **conditions)
                    return str(current.get("Modality", "") or "")
                await table.update_entity(entity, mode=UpdateMode.REPLACE, **conditions)
                return None
            except ResourceModifiedError:
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
