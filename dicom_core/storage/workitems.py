"""The workitem adapter: UPS workitems and their search keys in Azure Table Storage, beside (never in) the lake.

==========================  ================================  =================================
table                       PartitionKey                      RowKey
==========================  ================================  =================================
``{prefix}workitems``       ``{partition}``                   ``{workitem UID}``
``{prefix}workitemlookup``  ``{partition}|workitem|{key}``    ``{encoded value}|{workitem UID}``
==========================  ================================  =================================

A workitem entity holds its state, its Transaction UID (the owner's lock) and its DICOM JSON
(zlib, in 64 KiB binary properties). Every change is a read-modify-write under the entity's
ETag, so of two workers claiming one workitem at once exactly one write succeeds and the other
reads again and sees the claim (docs/workitems.md).

The lookup table follows storage/lookup.py (same encoding and RowKey ranges). Unlike the study
lookup, a workitem's values change (its state above all), so a change adds the new entries
before the entity is written and removes the old ones after: stale entries do not pile up, and
searches stay as cheap as the answer. An entry left by a failure in between is stale at worst;
every candidate is verified against its entity.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableServiceClient

from dicom_core.dicom.workitem import KEYS, State, element_at
from dicom_core.storage.lookup import Lookup, encode_value, parse_row_key
from dicom_core.storage.lookup_plan import ValueRange, index_entries
from dicom_core.storage.tables import Table

_SEPARATOR = "|"
_CHUNK = 64 * 1024  # Table Storage's limit for one binary property
_DATASET_COLUMNS = [f"Dataset{number}" for number in range(8)]  # 512 KiB compressed: far above MAX_WORKITEM_BYTES


@dataclass(frozen=True)
class WorkitemRecord:
    """One workitem as stored: ``etag`` is the version it was read at (None before it is stored)."""

    partition: str
    uid: str
    state: State
    transaction_uid: str | None
    dataset: dict
    etag: str | None = None


@dataclass(frozen=True)
class Candidate:
    """A lookup entry: the normalized value (``cut`` when it may have been shortened) and the workitem it points at."""

    value: str
    cut: bool
    uid: str


def _lookup_partition(partition: str, attribute: str) -> str:
    return _SEPARATOR.join((partition, "workitem", attribute))


def _entries(record: WorkitemRecord) -> set[tuple[str, str]]:
    return {
        (_lookup_partition(record.partition, attribute), f"{encode_value(value)}{_SEPARATOR}{record.uid}")
        for attribute, value in index_values(record.dataset)
    }


def _entity(record: WorkitemRecord) -> dict:
    packed = zlib.compress(json.dumps(record.dataset, separators=(",", ":")).encode(), 6)
    chunks = [packed[start : start + _CHUNK] for start in range(0, len(packed), _CHUNK)]
    if len(chunks) > len(_DATASET_COLUMNS):
        raise ValueError("the workitem is too large to store")  # MAX_WORKITEM_BYTES keeps far below this
    entity = {
        "PartitionKey": record.partition,
        "RowKey": record.uid,
        "State": record.state.value,
        "UpdatedAt": datetime.now(UTC),
    }
    if record.transaction_uid is not None:
        entity["TransactionUID"] = record.transaction_uid
    return entity | dict(zip(_DATASET_COLUMNS, chunks, strict=False))


def _record(entity: dict) -> WorkitemRecord:
    packed = b"".join(bytes(entity[column]) for column in _DATASET_COLUMNS if column in entity)
    return WorkitemRecord(
        partition=entity["PartitionKey"],
        uid=entity["RowKey"],
        state=State(entity["State"]),
        transaction_uid=entity.get("TransactionUID"),
        dataset=json.loads(zlib.decompress(packed)),
        etag=entity.metadata["etag"],
    )


class WorkitemStore(Table):
    """The ``{prefix}workitems`` and ``{prefix}workitemlookup`` tables."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        super().__init__(service, f"{table_prefix}workitems")
        self.lost_races = 0  # writes refused because another writer changed the workitem first (tests read it)
        self.lookup = Lookup(service, table_prefix, name="workitemlookup")

    async def prepare(self) -> bool:
        created = await super().prepare()
        await self.lookup.prepare()
        return created

    async def get(self, partition: str, uid: str) -> WorkitemRecord | None:
        """One workitem by its UID (a point read), or None."""
        entity = await self.point_read(partition, uid)
        return None if entity is None else _record(entity)

    async def create(self, record: WorkitemRecord) -> bool:
        """Store a new workitem; False when one with its UID exists (nothing is written then)."""
        if await self.get(record.partition, record.uid) is not None:
            return False
        await self.lookup.put(_entries(record))  # first: a workitem is never visible without its entries
        try:
            await self.client.create_entity(_entity(record))
        except ResourceExistsError:
            return False  # created in between by another request; our entries point at it and verify as usual
        return True

    async def replace(self, current: WorkitemRecord, new: WorkitemRecord) -> bool:
        """Write ``new`` over ``current`` if the workitem is still at ``current``'s version; False when it changed."""
        old_entries, new_entries = _entries(current), _entries(new)
        await self.lookup.put(new_entries - old_entries)
        try:
            await self.client.update_entity(
                _entity(new), mode=UpdateMode.REPLACE, etag=current.etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceModifiedError:
            self.lost_races += 1
            return False  # another writer got there first; entries just added are stale at worst
        await self.lookup.remove(old_entries - new_entries)
        return True

    async def candidates(
        self, partition: str, attribute: str, value_range: ValueRange, page_size: int
    ) -> AsyncIterator[Candidate]:
        """The lookup entries of one key whose values are in ``value_range``, in RowKey order."""
        async for row_key in self.lookup.scan(_lookup_partition(partition, attribute), value_range, page_size):
            value, cut, path = parse_row_key(row_key)
            yield Candidate(value, cut, path[0])

    async def in_partition(self, partition: str, page_size: int) -> AsyncIterator[WorkitemRecord]:
        """Every workitem of a partition in UID order, one page of ``page_size`` at a time."""
        async for entity in self.entities("PartitionKey eq @pk", {"pk": partition}, page_size=min(max(page_size, 1), 1000)):
            yield _record(entity)


def index_values(dataset: dict) -> list[tuple[str, str]]:
    """The (lookup attribute, normalized value) pairs of a workitem, normalized as QIDO's (storage/lookup_plan.py)."""
    return [entry for key in KEYS if key.keyword != "SOPInstanceUID" for entry in index_entries(key, element_at(dataset, key))]
