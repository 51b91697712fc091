"""The lookup table: secondary-index entities that turn QIDO-RS matching into RowKey ranges.

One entity per (attribute, normalized value, entity) and no properties (docs/index-design.md):

=================================================  =========================================
PartitionKey                                       RowKey
=================================================  =========================================
``{partition}|{level}|{attribute}``                ``{encoded value}|{study}[|{series}[|{sop}]]``
=================================================  =========================================

So an exact value is a RowKey prefix, a wildcard with a literal prefix a RowKey range,
and a date, time or number range a RowKey range (their normalized text sorts like the
values). Values are percent-encoded to printable ASCII without ``/ \\ # ? % |`` (keys must
not hold the first four, ``|`` separates the parts) and cut at ``MAX_VALUE_CHARS``; a
value that long may have been cut, so the search verifies it like every candidate.

Entries are only ever added. An entry may be stale (its instance deleted, its attribute
changed): every candidate is verified against the study, series or instance entity, so
deletes need not know this table.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from urllib.parse import unquote

from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableServiceClient

from dicom_core.dicom.levels import MODALITIES_IN_STUDY, Level
from dicom_core.storage.keys import AFTER_SEPARATOR, SEPARATOR, joined
from dicom_core.storage.lookup_plan import ValueRange, index_entries, indexed_keys
from dicom_core.storage.records import InstanceRecord
from dicom_core.storage.tables import MAX_TRANSACTION_OPERATIONS, Table

MAX_VALUE_CHARS = 512  # with a UID path of at most 3 x 64 + 3 characters, well under the 1 KiB key limit
_UNSAFE = set("/\\#?%|")


def encode_value(value: str) -> str:
    """``value`` as printable ASCII that keeps prefixes (each character maps to a fixed text), cut to the limit."""
    encoded = "".join(
        character
        if " " <= character <= "~" and character not in _UNSAFE
        else "".join(f"%{byte:02X}" for byte in character.encode("utf-8"))
        for character in value
    )
    if len(encoded) <= MAX_VALUE_CHARS:
        return encoded
    cut = MAX_VALUE_CHARS
    if "%" in encoded[cut - 2 : cut]:
        cut = encoded.rindex("%", 0, cut)  # never split an escape
    return encoded[:cut]


def may_be_cut(encoded: str) -> bool:
    return len(encoded) > MAX_VALUE_CHARS - 3


def partition_key(partition: str, level: Level, attribute: str) -> str:
    return joined(partition, level.label, attribute)


def row_key_bounds(value_range: ValueRange) -> tuple[str | None, str | None]:
    """The RowKeys (from inclusive, to exclusive) of the entries whose value is in ``value_range``."""
    low = encode_value(value_range.low)
    if value_range.kind == "exact":
        return f"{low}{SEPARATOR}", f"{low}{AFTER_SEPARATOR}"
    if value_range.kind == "between":
        return low, f"{encode_value(value_range.high)}{AFTER_SEPARATOR}"
    if not low:
        return None, None  # every value of the attribute: the whole partition
    return low, low[:-1] + chr(ord(low[-1]) + 1)  # encoded text is ASCII below "~", so the successor exists


def level_entries(partition: str, level: Level, path: tuple[str, ...], attributes: dict) -> list[tuple[str, str]]:
    """The (PartitionKey, RowKey) of every lookup entry of one study, series or instance."""
    suffix = joined(*path)
    return [
        (partition_key(partition, level, attribute), f"{encode_value(value)}{SEPARATOR}{suffix}")
        for key in indexed_keys(level, attributes)
        for attribute, value in index_entries(key, attributes.get(key.hex))
    ]


def study_entries(partition: str, study: str, attributes: dict, modality: str) -> list[tuple[str, str]]:
    """Lookup entries of a study; ModalitiesInStudy gets the modality of the series just stored."""
    with_modality = {**attributes, f"{MODALITIES_IN_STUDY:08X}": {"vr": "CS", "Value": [modality] if modality else []}}
    return level_entries(partition, Level.STUDY, (study,), with_modality)


def instance_entries(record: InstanceRecord) -> list[tuple[str, str]]:
    """Lookup entries of an instance."""
    key = record.key
    return level_entries(key.partition, Level.INSTANCE, (key.study, key.series, key.sop), record.attributes)


def parse_row_key(row_key: str) -> tuple[str, bool, tuple[str, ...]]:
    """The decoded value of a lookup RowKey, whether it may have been cut, and the UID path."""
    encoded, *path = row_key.split(SEPARATOR)
    return unquote(encoded), may_be_cut(encoded), tuple(path)


def _transactions(entries: Iterable[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Entries (each once) as the RowKeys of one PartitionKey, at most 100 at a time: a transaction each."""
    by_partition: dict[str, list[str]] = defaultdict(list)
    for pk, rk in dict.fromkeys(entries):
        by_partition[pk].append(rk)
    for pk, row_keys in by_partition.items():
        for start in range(0, len(row_keys), MAX_TRANSACTION_OPERATIONS):
            yield pk, row_keys[start : start + MAX_TRANSACTION_OPERATIONS]


class Lookup(Table):
    """The ``{prefix}lookup`` table (or another table of lookup entries: ``name``)."""

    def __init__(self, service: TableServiceClient, table_prefix: str, name: str = "lookup") -> None:
        super().__init__(service, f"{table_prefix}{name}")

    async def put(self, entries: Iterable[tuple[str, str]]) -> None:
        """Upsert entries: one transaction per PartitionKey and 100 entries, all partitions at once."""
        await asyncio.gather(*(self._write(pk, row_keys) for pk, row_keys in _transactions(entries)))

    async def _write(self, pk: str, row_keys: list[str]) -> None:
        if len(row_keys) == 1:
            await self.client.upsert_entity({"PartitionKey": pk, "RowKey": row_keys[0]}, mode=UpdateMode.REPLACE)
            return
        operations = [("upsert", {"PartitionKey": pk, "RowKey": rk}, {"mode": UpdateMode.REPLACE}) for rk in row_keys]
        await self.submit(operations)

    async def remove(self, entries: Iterable[tuple[str, str]]) -> None:
        """Delete entries (no error for those already gone), all at once."""

        async def delete(pk: str, rk: str) -> None:
            await self.client.delete_entity(pk, rk)

        await asyncio.gather(*(delete(pk, rk) for pk, rk in dict.fromkeys(entries)))

    async def clear(self, pk: str) -> int:
        """Remove every entry of one PartitionKey (an attribute no longer indexed), a page at a time; how many."""
        removed = 0
        while entries := await self.first_page("PartitionKey eq @pk", {"pk": pk}):
            await self.delete(entries)
            removed += len(entries)
        return removed

    async def first_page(self, query: str, parameters: dict[str, str]) -> list[tuple[str, str]]:
        """The entries of the first page of ``query`` that holds any (up to 1,000); empty when none match."""
        async for page in self.pages(query, parameters, ["PartitionKey", "RowKey"]):
            if page:  # a page may be empty yet not the last
                return [(entity["PartitionKey"], entity["RowKey"]) for entity in page]
        return []

    async def delete(self, entries: Iterable[tuple[str, str]]) -> None:
        """Delete entries known to exist: one transaction per PartitionKey and 100 entries."""
        for pk, row_keys in _transactions(entries):
            await self.submit([("delete", {"PartitionKey": pk, "RowKey": rk}) for rk in row_keys])

    async def scan(self, pk: str, value_range: ValueRange, page_size: int) -> AsyncIterator[str]:
        """The RowKeys of one partition whose values are in ``value_range``, in RowKey order."""
        low, high = row_key_bounds(value_range)
        query, parameters = "PartitionKey eq @pk", {"pk": pk}
        if low is not None:
            query += " and RowKey ge @low and RowKey lt @high"
            parameters |= {"low": low, "high": high}
        async for entity in self.entities(query, parameters, ["RowKey"], min(max(page_size, 1), 1000)):
            yield entity["RowKey"]


INSTANCE_LOOKUP_TABLE = "instancelookup"
# In the instance lookup table, beside entries (whose PartitionKeys all hold a "|"): this table holds
# every instance entry of the archive, none is left in the lookup table (see LookupTables).
_MARKER_PARTITION, _COMPLETE = "layout", "complete"


class LookupTables:
    """Every lookup entry: studies' and series' in ``{prefix}lookup``, instances' in ``{prefix}instancelookup``.

    The same methods as ``Lookup``; the level in an entry's PartitionKey picks its table.
    Why two tables: Azurite answers every key range by scanning its whole table, and an
    archive has about three instance entries for each study or series one, so a study
    search in one shared table paid for every instance (docs/index-design.md). On Azure a
    key range reads only its range, and a table more costs nothing.

    Archives written before the split hold their instance entries in ``{prefix}lookup``.
    Until the ``moveInstanceLookups`` operation has moved them all and marked the instance
    table complete, instance searches read both tables and merge them by key. New entries
    always go to the instance table; a new archive is complete from the start.
    """

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        self._studies_and_series = Lookup(service, table_prefix)
        self._instances = Lookup(service, table_prefix, name=INSTANCE_LOOKUP_TABLE)
        self._complete = False  # once the marker is seen it stays: entries only ever move into the instance table

    async def prepare(self) -> None:
        created = await self._studies_and_series.prepare()
        await self._instances.prepare()
        if created:  # a new archive: no instance entry was ever written to the lookup table
            await self.mark_complete()
        else:
            await self.instances_complete()

    def _table_of(self, pk: str) -> Lookup:
        level = pk.split(SEPARATOR)[1]  # partition_key: partition names hold no separator
        return self._instances if level == Level.INSTANCE.label else self._studies_and_series

    async def _legacy(self, pk: str) -> bool:
        """Whether entries of ``pk`` may still be in the lookup table, where archives before the split kept them."""
        return self._table_of(pk) is self._instances and not await self.instances_complete()

    def _by_table(self, entries: Iterable[tuple[str, str]]) -> dict[Lookup, list[tuple[str, str]]]:
        by_table: dict[Lookup, list[tuple[str, str]]] = defaultdict(list)
        for entry in entries:
            by_table[self._table_of(entry[0])].append(entry)
        return by_table

    async def put(self, entries: Iterable[tuple[str, str]]) -> None:
        await asyncio.gather(*(table.put(table_entries) for table, table_entries in self._by_table(entries).items()))

    async def remove(self, entries: Iterable[tuple[str, str]]) -> None:
        by_table = self._by_table(entries)
        removals = [table.remove(table_entries) for table, table_entries in by_table.items()]
        if by_table.get(self._instances) and not await self.instances_complete():
            removals.append(self._studies_and_series.remove(by_table[self._instances]))
        await asyncio.gather(*removals)

    async def clear(self, pk: str) -> int:
        removed = await self._table_of(pk).clear(pk)
        if await self._legacy(pk):
            removed += await self._studies_and_series.clear(pk)
        return removed

    async def scan(self, pk: str, value_range: ValueRange, page_size: int) -> AsyncIterator[str]:
        row_keys = self._table_of(pk).scan(pk, value_range, page_size)
        if await self._legacy(pk):
            row_keys = _merged(row_keys, self._studies_and_series.scan(pk, value_range, page_size))
        async for row_key in row_keys:
            yield row_key

    # -- the move of an archive's instance entries from before the split --------------------------------

    async def instances_complete(self) -> bool:
        """Whether the instance table holds every instance entry (one point read until it does)."""
        if not self._complete:
            self._complete = await self._instances.point_read(_MARKER_PARTITION, _COMPLETE, ["RowKey"]) is not None
        return self._complete

    async def mark_complete(self) -> None:
        await self._instances.client.upsert_entity({"PartitionKey": _MARKER_PARTITION, "RowKey": _COMPLETE})
        self._complete = True

    async def move_instance_entries(self, partition: str) -> int:
        """Move a page (up to 1,000) of ``partition``'s instance entries out of the lookup table; how many.

        Copied first, then deleted: cut off in between, an entry is in both tables, which a
        search reads as one, and the next move takes it again.
        """
        low = joined(partition, Level.INSTANCE.label, "")
        query = "PartitionKey ge @low and PartitionKey lt @high"
        entries = await self._studies_and_series.first_page(query, {"low": low, "high": low[:-1] + AFTER_SEPARATOR})
        await self._instances.put(entries)
        await self._studies_and_series.delete(entries)
        return len(entries)


async def _merged(first: AsyncIterator[str], second: AsyncIterator[str]) -> AsyncIterator[str]:
    """Two ascending streams of keys as one ascending stream, a key in both once."""
    a, b = await anext(first, None), await anext(second, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a <= b):
            yield a
            if a == b:
                b = await anext(second, None)
            a = await anext(first, None)
        else:
            yield b
            b = await anext(second, None)
