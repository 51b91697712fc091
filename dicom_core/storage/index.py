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
instances, modalities in study) live on the study and series entities; they are
recounted from the entities below them after every store and delete, under ETag
optimistic concurrency, so concurrent and repeated stores and deletes keep them
exact (``refresh``). Callers see typed records (storage/records.py), never entities.

The adapter also keeps the instance records it read lately, for the one kind
of caller that may use them without asking the index again: a retrieve whose every lake
read is conditional on the recorded ETag, and that decides any failure again on a fresh
read (operations/retrieve/finding.py ``with_instance``). This process's own writes drop
the record; another host's writes are caught by the ETag condition.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import zlib
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from dicom_core.dicom.levels import SERIES_TAGS, STUDY_TAGS, Level, level_json
from dicom_core.storage.errors import StorageContention
from dicom_core.storage.keys import (
    UID_COLUMNS,
    children_range,
    instance_identity,
    instance_keys,
    key_of,
    range_filter,
    study_partition_key,
)
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.lookup import LookupTables, instance_entries, level_entries, study_entries
from dicom_core.storage.records import InstanceRecord, LevelRecord, LevelUpdate, SeriesRecord, StudyRecord
from dicom_core.storage.tables import MAX_TRANSACTION_OPERATIONS, Table

logger = logging.getLogger(__name__)

_MAX_BINARY = 64 * 1024  # Table Storage's limit for one binary property
_CONCURRENCY_RETRIES = 50
_MODALITY = "00080060"
_PAGE = 1000  # Table Storage's largest page
# On a study or series entity: which attributes and modality a store last wrote lookup entries for.
_LOOKUP_DIGEST = "LookupDigest"
_NOT_READ: Any = object()  # _recount's entity when the caller has not read it already
MAX_TRANSACTION_BYTES = 2 * 1024 * 1024
"""What one transaction of instance entities may carry (``PreparedInstance.size``): well under the 4 MiB limit."""
# Instance columns read unless the metadata is asked for: everything but the DICOM JSON, the largest.
_INSTANCE_SUMMARY = [
    *UID_COLUMNS, "SOPClassUID", "Path", "Size", "ETag", "TransferSyntaxUID", "NumberOfFrames", "FrameRanges", "Attributes",
    "StoredAt", "OriginalPath",
]  # fmt: skip
_INSTANCE_SWEEP = [*UID_COLUMNS, "Path", "ETag", "OriginalPath"]
INSTANCE_CACHE_BYTES = 16 * 1024 * 1024
"""About how much memory the instance records one process keeps may take (least recently used out first)."""
# Estimated memory of a cached record (it has no DICOM JSON): its attributes, plus each (offset, length) of its frames.
_RECORD_BYTES = 2048
_FRAME_RANGE_BYTES = 128


# -- encodings --------------------------------------------------------------------------------------


def _compressed(data: bytes) -> bytes | None:
    """``data`` compressed, or None when that is still too large for one property.

    zlib's default level: a CT's DICOM JSON takes 2.2 KB against 2.7 at level 1, for 0.07 ms more,
    and every byte of an entity counts twice on Azurite, which rewrites its whole table file every 5 s.
    """
    encoded = zlib.compress(data, 6)
    return encoded if len(encoded) <= _MAX_BINARY else None


def _encode_frame_ranges(ranges: list[list[tuple[int, int]]] | None) -> bytes | None:
    if ranges is None:
        return None
    return _compressed(json.dumps(ranges, separators=(",", ":")).encode())


def _decode_frame_ranges(value: bytes | None) -> list[list[tuple[int, int]]] | None:
    if not value:
        return None
    return [[(offset, length) for offset, length in frame] for frame in json.loads(zlib.decompress(value))]


def _instance_entity(record: InstanceRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        **instance_identity(record.key),
        "SOPClassUID": record.sop_class_uid,
        "Path": record.path,
        "Size": record.size,
        "ETag": record.etag,
        "TransferSyntaxUID": record.transfer_syntax,
        "NumberOfFrames": record.number_of_frames,
        "StoredAt": record.stored_at,
        "Attributes": json.dumps(record.attributes, separators=(",", ":")),
    }
    frame_ranges = _encode_frame_ranges(record.frame_ranges)
    if frame_ranges is not None:
        entity["FrameRanges"] = frame_ranges
    metadata = _compressed(record.metadata_json) if record.metadata_json else None
    if metadata is not None:
        entity["Metadata"] = metadata
    if record.original_path:
        entity["OriginalPath"] = record.original_path
    return entity


def _version(entity: TableEntity) -> str:
    return str(entity.metadata.get("etag", "")) if hasattr(entity, "metadata") else ""


def _instance_record(entity: TableEntity) -> InstanceRecord:
    """The record of an instance entity; columns left out of the read take empty values."""
    metadata = entity.get("Metadata")
    return InstanceRecord(
        key=key_of(entity),
        sop_class_uid=entity.get("SOPClassUID", ""),
        path=entity.get("Path", ""),
        size=int(entity.get("Size") or 0),
        etag=entity.get("ETag", ""),
        transfer_syntax=entity.get("TransferSyntaxUID", ""),
        number_of_frames=int(entity.get("NumberOfFrames") or 1),
        frame_ranges=_decode_frame_ranges(entity.get("FrameRanges")),
        metadata_json=zlib.decompress(metadata) if metadata else None,
        attributes=json.loads(entity.get("Attributes") or "{}"),
        stored_at=entity.get("StoredAt") or datetime.now(UTC),
        version=_version(entity),
        reconciliation_needed=entity.get("ReconciliationNeeded"),
        original_path=entity.get("OriginalPath") or None,
    )


def _series_record(entity: TableEntity) -> SeriesRecord:
    return SeriesRecord(
        partition=entity["PartitionName"],
        study=entity["StudyInstanceUID"],
        series=entity["SeriesInstanceUID"],
        modality=str(entity.get("Modality", "") or ""),
        attributes=json.loads(entity.get("Attributes") or "{}"),
        instance_count=int(entity.get("NumberOfSeriesRelatedInstances", 0) or 0),
        version=_version(entity),
    )


def _study_record(entity: TableEntity) -> StudyRecord:
    return StudyRecord(
        partition=entity["PartitionName"],
        study=entity["StudyInstanceUID"],
        attributes=json.loads(entity.get("Attributes") or "{}"),
        series_count=int(entity.get("NumberOfStudyRelatedSeries", 0) or 0),
        instance_count=int(entity.get("NumberOfStudyRelatedInstances", 0) or 0),
        modality_counts=json.loads(entity.get("ModalityCounts") or "{}"),
        version=_version(entity),
    )


def _level_lookups(record: LevelRecord, attributes: dict) -> list[tuple[str, str]]:
    """The lookup entries of a study or series record if it held ``attributes``."""
    if isinstance(record, StudyRecord):
        modalities = record.modalities or [""]
        return [entry for modality in modalities for entry in study_entries(record.partition, record.study, attributes, modality)]
    if isinstance(record, SeriesRecord):
        return level_entries(record.partition, Level.SERIES, (record.study, record.series), attributes)
    return instance_entries(replace(record, attributes=attributes))


_DECODERS: dict[Level, Callable[[TableEntity], LevelRecord]] = {
    Level.STUDY: _study_record,
    Level.SERIES: _series_record,
    Level.INSTANCE: _instance_record,
}


def _keys(level: Level, partition: str, path: tuple[str, ...]) -> tuple[str, str]:
    """(PartitionKey, RowKey) of the entity at UID ``path`` (study first) of ``level``."""
    study, *rest = path
    if level == Level.STUDY:
        return partition, study
    if level == Level.SERIES:
        return study_partition_key(partition, study), rest[0]
    return instance_keys(InstanceKey(partition, study, rest[0], rest[1]))


class _InstanceCache:
    """An LRU map of instance keys to the records last read of them, bounded by their estimated size.

    By size rather than count: a record of a file with thousands of frames holds thousands of ranges.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._used = 0
        self._records: OrderedDict[InstanceKey, InstanceRecord] = OrderedDict()

    def get(self, key: InstanceKey) -> InstanceRecord | None:
        """The record marked ``cached``; marked here, on a hit, so that filling the cache costs no copy."""
        record = self._records.get(key)
        if record is None:
            return None
        self._records.move_to_end(key)
        return replace(record, cached=True)

    def put(self, record: InstanceRecord) -> None:
        self.forget([record.key])
        size = _cached_size(record)
        if size > self._capacity:
            return
        # The DICOM JSON is the bulk of a record and no cached reader needs it.
        self._records[record.key] = record if record.metadata_json is None else replace(record, metadata_json=None)
        self._used += size
        while self._used > self._capacity:
            _, evicted = self._records.popitem(last=False)
            self._used -= _cached_size(evicted)

    def forget(self, keys: Iterable[InstanceKey]) -> None:
        for key in keys:
            record = self._records.pop(key, None)
            if record is not None:
                self._used -= _cached_size(record)


def _cached_size(record: InstanceRecord) -> int:
    return _RECORD_BYTES + _FRAME_RANGE_BYTES * sum(len(frame) for frame in record.frame_ranges or ())


@dataclass(frozen=True)
class PreparedInstance:
    """An instance record encoded once for a transaction; ``size`` bounds its encoded size on the wire."""

    record: InstanceRecord
    entity: dict[str, Any]

    @property
    def size(self) -> int:
        # Binary goes as base64: 4/3 of its length, plus property names and JSON framing.
        return 1024 + sum(len(value) * 4 // 3 + 64 for value in self.entity.values() if isinstance(value, str | bytes))


class Index:
    """Study, series and instance entities in tables named ``{prefix}studies`` and so on."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        self._service = service
        self._studies = Table(service, f"{table_prefix}studies")
        self._series = Table(service, f"{table_prefix}series")
        self._instances = Table(service, f"{table_prefix}instances")
        self.lookup = LookupTables(service, table_prefix)
        self._cached = _InstanceCache(INSTANCE_CACHE_BYTES)

    @property
    def _tables(self) -> dict[Level, Table]:
        return {Level.STUDY: self._studies, Level.SERIES: self._series, Level.INSTANCE: self._instances}

    async def close(self) -> None:
        await self._service.close()

    async def prepare(self) -> None:
        for table in (self._studies, self._series, self._instances, self.lookup):
            await table.prepare()

    # -- instances ---------------------------------------------------------------------------

    async def get_instance(self, key: InstanceKey) -> InstanceRecord | None:
        """The instance ``key`` by a point read, or None."""
        entity = await self._instances.point_read(*instance_keys(key))
        if entity is None:
            self._cached.forget([key])
            return None
        record = _instance_record(entity)
        self._cached.put(record)
        return record

    def cached_instance(self, key: InstanceKey) -> InstanceRecord | None:
        """The record of ``key`` this process read lately, without a request: marked ``cached``, without its DICOM JSON.

        See the module docstring for who may use it.
        """
        return self._cached.get(key)

    def prepare_instance(self, record: InstanceRecord) -> PreparedInstance:
        return PreparedInstance(record, _instance_entity(record))

    async def put_instance(self, record: InstanceRecord) -> None:
        """Create or replace one instance entity (counts follow from ``refresh``)."""
        self._cached.forget([record.key])
        await self.lookup.put(instance_entries(record))  # first: an entity is never visible without its entries
        await self._instances.client.upsert_entity(_instance_entity(record), mode=UpdateMode.REPLACE)

    async def replace_instances(self, changed: list[tuple[InstanceRecord, InstanceRecord]]) -> list[bool]:
        """Replace instance entities of one study, each ``(record, previous)`` read as ``previous.version``.

        In transactions of up to 100 entities and ~2 MiB, each operation conditional on its
        entity's ETag; the lookup entries ``record`` has and ``previous`` had not go first. When a
        transaction fails (an entity changed or went since it was read), its entities are
        replaced one by one. Whether each was replaced; False when it changed or went since.
        """
        self._cached.forget(record.key for record, _ in changed)
        await self.lookup.put(
            entry for record, previous in changed for entry in set(instance_entries(record)) - set(instance_entries(previous))
        )
        replaced: list[bool] = []
        batch: list[tuple[str, dict, dict]] = []
        size = 0
        for record, previous in changed:
            prepared = self.prepare_instance(record)
            condition = {"etag": previous.version, "match_condition": MatchConditions.IfNotModified}
            batch.append(("update", prepared.entity, {"mode": UpdateMode.REPLACE, **condition}))
            size += prepared.size
            if len(batch) == MAX_TRANSACTION_OPERATIONS or size >= MAX_TRANSACTION_BYTES:
                replaced += await self._replace_batch(batch)
                batch, size = [], 0
        return replaced + (await self._replace_batch(batch) if batch else [])

    async def _replace_batch(self, batch: list[tuple[str, dict, dict]]) -> list[bool]:
        try:
            await self._instances.submit(batch)
            return [True] * len(batch)
        except TableTransactionError:
            return [await self._replace_one(entity, options) for _, entity, options in batch]

    async def _replace_one(self, entity: dict, options: dict) -> bool:
        try:
            await self._instances.client.update_entity(entity, **options)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    async def put_instances(self, prepared: list[PreparedInstance]) -> None:
        """Create or replace instance entities of one study in one transaction (at most 100, under 4 MiB)."""
        self._cached.forget(item.record.key for item in prepared)
        await self.lookup.put(entry for item in prepared for entry in instance_entries(item.record))
        await self._instances.submit([("upsert", item.entity, {"mode": UpdateMode.REPLACE}) for item in prepared])

    def instances_of_study(
        self,
        partition: str,
        study: str,
        series: str | None = None,
        *,
        metadata: bool = True,
        after: InstanceKey | None = None,
        page_size: int = _PAGE,
    ) -> AsyncIterator[InstanceRecord]:
        """Instance records of a study (or of one series of it), by key range; only those following ``after``."""
        return self.children(
            Level.INSTANCE, partition, study, series, metadata=metadata, page_size=page_size,
            after=None if after is None else instance_keys(after)[1],
        )  # type: ignore[return-value]  # fmt: skip

    async def all_instances(self, partition: str | None = None) -> AsyncIterator[InstanceRecord]:
        """Every instance (of one partition), keys, path and ETag only; for reindex, never for a request."""
        query, parameters = ("PartitionKey ge @pk", {"pk": ""})  # every partition
        if partition is not None:
            query, parameters = range_filter("PartitionKey", *children_range(partition))
        async for entity in self._instances.entities(query, parameters, _INSTANCE_SWEEP, _PAGE):
            yield _instance_record(entity)

    async def all_of(self, level: Level) -> AsyncIterator[LevelRecord]:
        """Every study or series record of every partition; for the consistency checker and reindex only."""
        decode = _DECODERS[level]
        async for entity in self._tables[level].client.list_entities(results_per_page=_PAGE):
            yield decode(entity)

    async def instances_after(self, after: InstanceKey | None, limit: int) -> list[InstanceRecord]:
        """Up to ``limit`` instances (with their metadata) following ``after`` in key order: a reindex's next batch.

        Key order is partition, study, then series and instance, so a walk that resumes after its
        last key misses nothing stored before it started and visits nothing twice. Two range
        queries, the rest of ``after``'s study then the studies after it: Table Storage runs a
        filter with ``or`` as a scan.
        """
        ranges = [("PartitionKey ge @pk", {"pk": ""})]
        if after is not None:
            pk, rk = instance_keys(after)
            ranges = [("PartitionKey eq @pk and RowKey gt @rk", {"pk": pk, "rk": rk}), ("PartitionKey gt @pk", {"pk": pk})]
        found: list[InstanceRecord] = []
        for query, parameters in ranges:
            async for page in self._instances.pages(query, parameters, page_size=min(max(limit - len(found), 1), _PAGE)):
                found += [_instance_record(entity) for entity in page]
                if len(found) >= limit:
                    return found[:limit]
        return found

    async def instance_total(self) -> int:
        """How many instances the index holds: the studies' counts, one entity per study."""
        entities = self._studies.client.list_entities(select=["NumberOfStudyRelatedInstances"], results_per_page=_PAGE)
        return sum([int(entity.get("NumberOfStudyRelatedInstances") or 0) async for entity in entities])

    async def partitions(self) -> list[tuple[str, datetime]]:
        """The DICOM partitions that hold a study, in name order, with the time their first study was written.

        One query per partition: each asks for the first study after the partitions found so far.
        """
        found: list[tuple[str, datetime]] = []
        after = ""
        while True:
            first = None
            async for page in self._studies.pages("PartitionKey gt @after", {"after": after}, ["PartitionKey"], page_size=1):
                if page:  # a page may be empty yet not the last
                    first = page[0]
                    break
            if first is None:
                return found
            entity = first
            after = entity["PartitionKey"]
            found.append((after, entity.metadata.get("timestamp") or datetime.now(UTC)))

    async def add_attributes(
        self, level: Level, partition: str, path: tuple[str, ...], elements: dict, *, move_lookups: bool = False
    ) -> bool:
        """Set ``elements`` in the attributes of the study, series or instance at ``path``, under its ETag.

        Only the Attributes column changes, never the counts; an entity gone meanwhile is left
        gone (False). A reindex of extended query tags writes its lookup entries itself; a bulk
        update (``move_lookups``, studies and series) has the entries follow the values: the new
        ones first, so the entity is never found without them, and those of values it no longer
        holds once it is written.
        """
        table = self._tables[level]
        pk, rk = _keys(level, partition, path)
        for _ in range(_CONCURRENCY_RETRIES):
            current = await table.point_read(pk, rk, None if move_lookups else ["Attributes"])
            if current is None:
                return False
            attributes = json.loads(current.get("Attributes") or "{}")
            before, after = [], []
            if move_lookups:
                record = _DECODERS[level](current)
                before, after = _level_lookups(record, attributes), _level_lookups(record, attributes | elements)
                await self.lookup.put(after)
            entity = {"PartitionKey": pk, "RowKey": rk, "Attributes": json.dumps(attributes | elements, separators=(",", ":"))}
            try:
                await table.client.update_entity(
                    entity, mode=UpdateMode.MERGE, etag=current.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )
            except ResourceNotFoundError:
                return False
            except ResourceModifiedError:
                continue  # a store or another writer changed it: read again
            await self.lookup.remove(set(before) - set(after))
            return True
        raise StorageContention(f"gave up updating {table.table_name} entity {pk}/{rk} after {_CONCURRENCY_RETRIES} conflicts")

    async def delete_instance(self, key: InstanceKey) -> None:
        """Remove one instance entity (no error when it is gone already)."""
        self._cached.forget([key])
        await self._instances.client.delete_entity(*instance_keys(key))

    async def delete_entry(self, level: Level, partition: str, path: tuple[str, ...]) -> None:
        """Remove the study, series or instance entity at UID ``path`` alone, counts and lookups untouched."""
        if level == Level.INSTANCE:
            self._cached.forget([InstanceKey(partition, *path)])
        await self._tables[level].client.delete_entity(*_keys(level, partition, path))

    async def flag_for_reconciliation(self, key: InstanceKey, reason: str) -> None:
        """Mark an instance whose file changed in the lake outside the API; logged, never raised.

        ``ReconciliationNeeded`` holds the reason and ``ReconciliationFlaggedAt`` the time, merged
        into the entity, so that reconciliation can find and repair it; nothing else changes.
        """
        self._cached.forget([key])
        partition_key, row_key = instance_keys(key)
        entity = {
            "PartitionKey": partition_key,
            "RowKey": row_key,
            "ReconciliationNeeded": reason,
            "ReconciliationFlaggedAt": datetime.now(UTC),
        }
        try:
            await self._instances.client.update_entity(entity, mode=UpdateMode.MERGE)
        except ResourceNotFoundError:
            return  # deleted meanwhile: nothing left to reconcile
        except AzureError as error:
            logger.warning("could not flag instance %s for reconciliation: %s", key.sop, type(error).__name__)

    # -- studies and series ------------------------------------------------------------------

    async def get_study(self, partition: str, study: str) -> StudyRecord | None:
        entity = await self._studies.point_read(partition, study)
        return None if entity is None else _study_record(entity)

    async def get_series(self, partition: str, study: str, series: str) -> SeriesRecord | None:
        entity = await self._series.point_read(study_partition_key(partition, study), series)
        return None if entity is None else _series_record(entity)

    # -- searches (operations/search.py): point reads and key ranges --------------------------------

    async def read(self, level: Level, partition: str, path: tuple[str, ...], *, metadata: bool = False) -> LevelRecord | None:
        """The study, series or instance at UID ``path`` (study first) by a point read, or None."""
        entity = await self._tables[level].point_read(*_keys(level, partition, path), self._columns(level, metadata))
        return None if entity is None else _DECODERS[level](entity)

    def children(
        self,
        level: Level,
        partition: str,
        study: str,
        series: str | None = None,
        *,
        metadata: bool = False,
        page_size: int = _PAGE,
        after: str | None = None,
    ) -> AsyncIterator[LevelRecord]:
        """The series or instances of a study, or the instances of one series of it, in key order (RowKeys past ``after``)."""
        query, parameters = "PartitionKey eq @pk", {"pk": study_partition_key(partition, study)}
        if series is not None:
            row_query, row_parameters = range_filter("RowKey", *children_range(series))
            query, parameters = f"{query} and {row_query}", parameters | row_parameters
        if after is not None:
            query, parameters = f"{query} and RowKey gt @after", parameters | {"after": after}
        return self._pages(level, query, parameters, metadata, page_size)

    def in_partition(
        self, level: Level, partition: str, *, metadata: bool = False, page_size: int = _PAGE
    ) -> AsyncIterator[LevelRecord]:
        """Every record of a level in one DICOM partition, in key order (a PartitionKey range below the study level)."""
        if level == Level.STUDY:
            query, parameters = "PartitionKey eq @pk", {"pk": partition}
        else:
            query, parameters = range_filter("PartitionKey", *children_range(partition))
        return self._pages(level, query, parameters, metadata, page_size)

    @staticmethod
    def _columns(level: Level, metadata: bool) -> list[str] | None:
        return None if level != Level.INSTANCE or metadata else _INSTANCE_SUMMARY

    async def _pages(
        self, level: Level, query: str, parameters: dict, metadata: bool, page_size: int
    ) -> AsyncIterator[LevelRecord]:
        entities = self._tables[level].entities(query, parameters, self._columns(level, metadata), min(max(page_size, 1), _PAGE))
        decode = _DECODERS[level]
        async for entity in entities:
            record = decode(entity)
            if isinstance(record, InstanceRecord):
                self._cached.put(record)  # a viewer asks for the frames of the series it read the metadata of
            yield record

    # -- counts ------------------------------------------------------------------------------

    async def record_stored(self, update: LevelUpdate) -> None:
        """Make the series and study of a store agree with their instance entities, with the attributes just seen.

        The lookup entries of both go first, so a study or series is never visible without
        them; an entry left by a failure in between is stale, and searches verify entries.
        A study or series whose entity says a store already wrote the entries of these very
        attributes, and still holds them, is not written again: a study stored series by
        series, or a series stored instance by instance, writes its entries once.
        """
        pk = study_partition_key(update.partition, update.study)
        series_entity, study_entity = await asyncio.gather(
            self._series.point_read(pk, update.series), self._studies.point_read(update.partition, update.study)
        )
        entries = []
        if not _has_lookup_entries(study_entity, update.study_attributes, update.modality):
            entries += study_entries(update.partition, update.study, update.study_attributes, update.modality)
        if not _has_lookup_entries(series_entity, update.series_attributes, update.modality):
            entries += level_entries(update.partition, Level.SERIES, (update.study, update.series), update.series_attributes)
        await self.lookup.put(entries)
        await self._refresh_series(update.partition, update.study, update.series, update, read=series_entity)
        await self._refresh_study(update.partition, update.study, update, read=study_entity)

    async def refresh(self, partition: str, study: str, series: Iterable[str]) -> bool:
        """Recount ``series`` of ``study`` and then the study from the entities under them; True when a count changed.

        Counts are derived, never incremented, so a store or delete that is retried, or
        killed and finished by another host, cannot count anything twice or not at all.
        Each write is conditional on the ETag read before counting: whoever writes last
        counted after every entity write that preceded it (docs/reliability.md), and every
        writer of an instance entity refreshes afterwards.
        """
        changed = False
        for uid in dict.fromkeys(series):
            changed |= await self._refresh_series(partition, study, uid, None)
        return await self._refresh_study(partition, study, None) or changed

    async def _refresh_series(
        self, partition: str, study: str, series: str, update: LevelUpdate | None, read: Any = _NOT_READ
    ) -> bool:
        pk = study_partition_key(partition, study)

        async def recounted(current: TableEntity | None) -> tuple[dict | None, bool]:
            count = await self._count(self._instances, pk, *children_range(series))
            if count == 0:
                return None, current is not None
            entity = dict(current) if current is not None else {"PartitionKey": pk, "RowKey": series}
            attributes = update.series_attributes if update is not None else None
            modality = update.modality if update is not None else None
            if current is None and update is None:
                modality, attributes = await self._seen_in_series(partition, study, series, SERIES_TAGS)
            entity.update(PartitionName=partition, StudyInstanceUID=study, SeriesInstanceUID=series)
            entity.update(NumberOfSeriesRelatedInstances=count, UpdatedAt=datetime.now(UTC))
            if attributes is not None:
                entity.update(Attributes=json.dumps(attributes, separators=(",", ":")), Modality=modality or "")
            if update is not None:  # record_stored wrote (or found) the entries of these attributes
                entity[_LOOKUP_DIGEST] = _lookup_digest(update.series_attributes, update.modality)
            before = int(current.get("NumberOfSeriesRelatedInstances", -1)) if current is not None else 0
            return entity, before != count

        return await self._recount(self._series, pk, series, f"series {series}", recounted, read)

    async def _refresh_study(self, partition: str, study: str, update: LevelUpdate | None, read: Any = _NOT_READ) -> bool:
        async def recounted(current: TableEntity | None) -> tuple[dict | None, bool]:
            series = [record async for record in self.children(Level.SERIES, partition, study)]
            if not series:
                return None, current is not None
            counts = (len(series), sum(record.instance_count for record in series))
            modalities = dict(sorted(Counter(record.modality for record in series if record.modality).items()))
            entity = dict(current) if current is not None else {"PartitionKey": partition, "RowKey": study}
            attributes = update.study_attributes if update is not None else None
            if current is None and update is None:
                _, attributes = await self._seen_in_series(partition, study, series[0].series, STUDY_TAGS)
            entity.update(PartitionName=partition, StudyInstanceUID=study, UpdatedAt=datetime.now(UTC))
            entity.update(NumberOfStudyRelatedSeries=counts[0], NumberOfStudyRelatedInstances=counts[1])
            entity.update(ModalityCounts=json.dumps(modalities, sort_keys=True))
            if attributes is not None:
                entity["Attributes"] = json.dumps(attributes, separators=(",", ":"))
            if update is not None:
                entity[_LOOKUP_DIGEST] = _lookup_digest(update.study_attributes, update.modality)
            before = _study_record(current) if current is not None else None
            unchanged = before is not None and (before.series_count, before.instance_count, dict(before.modality_counts)) == (
                *counts,
                modalities,
            )
            return entity, not unchanged

        return await self._recount(self._studies, partition, study, f"study {study}", recounted, read)

    async def _recount(
        self,
        table: Table,
        pk: str,
        rk: str,
        what: str,
        recounted: Callable[[TableEntity | None], Awaitable[tuple[dict | None, bool]]],
        read: Any = _NOT_READ,
    ) -> bool:
        """Write what ``recounted`` makes of the entity at ``pk``/``rk`` (None: remove it), conditional on its ETag.

        The entity is read before counting (``read``: the caller read it already), so a write
        that succeeds counted after every change that preceded it; a conflict reads and counts
        again. True when a count changed.
        """
        for attempt in range(_CONCURRENCY_RETRIES):
            current = read if attempt == 0 and read is not _NOT_READ else await table.point_read(pk, rk)
            try:
                entity, changed = await recounted(current)
                if entity is None:
                    await self._remove(table.client, current)
                else:
                    await self._write(table.client, entity, current)
                return changed
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                continue  # another writer got there first: read and count again
        raise StorageContention(f"gave up recounting {what} after {_CONCURRENCY_RETRIES} conflicts")

    @staticmethod
    async def _write(table: TableClient, entity: dict, current: TableEntity | None) -> None:
        """Create ``entity``, or replace ``current`` if nobody changed it since it was read."""
        if current is None:
            await table.create_entity(entity)
        else:
            await table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"], match_condition=MatchConditions.IfNotModified
            )

    @staticmethod
    async def _remove(table: TableClient, current: TableEntity | None) -> None:
        """Delete ``current`` (a series or study left without instances) if nobody changed it since it was read."""
        if current is not None:
            unchanged = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
            await table.delete_entity(current["PartitionKey"], current["RowKey"], **unchanged)

    async def _count(self, table: Table, pk: str, low: str, high: str) -> int:
        query, parameters = range_filter("RowKey", low, high)
        pages = table.pages(f"PartitionKey eq @pk and {query}", {"pk": pk} | parameters, ["RowKey"], _PAGE)
        return sum([len(page) async for page in pages])

    async def _seen_in_series(self, partition: str, study: str, series: str, tags: tuple[int, ...]) -> tuple[str, dict]:
        """(Modality, level attributes) of a series from one of its instances, when no store said them (repairs)."""
        async for record in self.instances_of_study(partition, study, series, metadata=True):
            model = record.metadata or record.attributes
            return str((model.get(_MODALITY) or {}).get("Value", [""])[0] or ""), level_json(model, tags)
        return "", {}


def _lookup_digest(attributes: dict, modality: str) -> str:
    return hashlib.sha256(json.dumps([attributes, modality], sort_keys=True).encode()).hexdigest()[:32]


def _has_lookup_entries(entity: TableEntity | None, attributes: dict, modality: str) -> bool:
    """Whether a store wrote the lookup entries of ``attributes`` and ``modality`` for this study or series entity.

    Its attributes must also still be these: a bulk update that changed them removed their
    entries, and a store of the old values must write them again.
    """
    return (
        entity is not None
        and entity.get(_LOOKUP_DIGEST) == _lookup_digest(attributes, modality)
        and json.loads(entity.get("Attributes") or "null") == attributes
    )
