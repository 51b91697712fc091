"""The change feed in Table Storage: a gap-free, duplicate-free sequence without a database sequence.

Everything lives in one table partition (``PartitionKey = "feed"``) of ``{prefix}changefeed``:

=========================================  ==================================================
RowKey                                     holds
=========================================  ==================================================
``counter``                                ``Last``: the highest sequence used; ``LastTime``
``e{sequence:019d}``                       one entry: action, state, UIDs, lake path, time
``i{partition}|{study}|{series}|{sop}``    the instance's latest entry and file ETag announced
=========================================  ==================================================

Sequence numbers are allocated and used in the same entity-group transaction: the
counter is updated under its ETag together with the new entries, the instances'
pointers (under their ETags) and the State of the entries they replace. A
transaction is atomic, so a number is never allocated without its entry (no gaps),
two writers can never commit the same number (the loser's ETag no longer matches;
it reads again and retries: no duplicates), and an instance version announced once
is never announced again (the pointer records its file ETag). Timestamps are
``max(now, LastTime)``, so they never decrease along the sequence, and a time window
maps to one sequence range, found by bisection over point reads.

The price is one partition for the whole feed: Azure's target of 2,000 entities/s
per partition bounds the feed at roughly that many events per second.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableServiceClient

from dicom_core.storage.errors import StorageContention
from dicom_core.storage.keys import joined
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.tables import MAX_TRANSACTION_OPERATIONS, Table

FEED_PARTITION = "feed"
COUNTER = "counter"
CREATE, UPDATE, DELETE = "create", "update", "delete"
CURRENT, REPLACED, DELETED = "current", "replaced", "deleted"
# A transaction (MAX_TRANSACTION_OPERATIONS, 100) holds the counter, and per change its new
# entry, its pointer and (when it supersedes an entry) that entry's State. A new instance
# needs 2, so a STOW of 49 new instances is one transaction.
_RETRIES = 200
_RANGE_READ_FROM = 4  # pointers of a study read by one range query rather than point reads
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Change:
    """A stored (``deleted`` False) or deleted instance version to announce."""

    key: InstanceKey
    path: str
    file_etag: str
    deleted: bool = False
    # The store created the instance's entity: most likely nothing was announced for it
    # before, so its pointer is not read first (a wrong guess fails the transaction and
    # the retry reads it).
    probably_new: bool = False


@dataclass(frozen=True)
class _Counter:
    """The counter entity as last read or written: the highest sequence, its time and the entity's ETag."""

    last: int
    time: datetime
    etag: str


@dataclass(frozen=True)
class Pointer:
    """The latest announced version of one instance: its entry's sequence and file ETag, or its deletion."""

    key: InstanceKey
    latest: int
    file_etag: str
    deleted: bool


@dataclass(frozen=True)
class FeedEntry:
    sequence: int
    key: InstanceKey
    path: str
    action: str
    state: str
    timestamp: datetime


def entry_row_key(sequence: int) -> str:
    return f"e{sequence:019d}"


def pointer_row_key(key: InstanceKey) -> str:
    return "i" + joined(key.partition, key.study, key.series, key.sop)


def _entry(entity: dict) -> FeedEntry:
    return FeedEntry(
        sequence=int(entity["Sequence"]),
        key=InstanceKey(
            entity["PartitionName"], entity["StudyInstanceUID"], entity["SeriesInstanceUID"], entity["SOPInstanceUID"]
        ),
        path=entity["FilePath"],
        action=entity["Action"],
        state=entity["State"],
        timestamp=entity["Time"],
    )


class ChangeFeedStore(Table):
    """Append to and read the change feed table ``{prefix}changefeed``."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        super().__init__(service, f"{table_prefix}changefeed")

    async def append(self, changes: Sequence[Change]) -> int:
        """Announce ``changes`` (skipping versions already announced); the number of entries written."""
        # One instance appears once per transaction; its latest version is the one to announce.
        pending = list({pointer_row_key(change.key): change for change in changes}.values())
        written, counter = 0, None
        while pending:
            entries, consumed, counter = await self._append_chunk(_fitting(pending), counter)
            written += entries
            pending = pending[consumed:]
        return written

    async def _append_chunk(self, changes: Sequence[Change], known: _Counter | None) -> tuple[int, int, _Counter | None]:
        """Announce a prefix of ``changes`` in one transaction: (entries written, changes dealt with, the counter now).

        The prefix is all of them unless a guess that an instance was new proved wrong and
        its extra operation would not fit; the caller passes the rest on to the next chunk.
        ``known`` is the counter this request's previous chunk committed: it is not read again
        (when another writer moved it since, the ETag no longer matches and the retry reads it).
        """
        for attempt in range(_RETRIES):
            counter, pointers = await asyncio.gather(
                _known(known) if attempt == 0 and known is not None else self._counter(),
                self._pointers(changes, guess=attempt == 0),
            )
            last = counter.last if counter else 0
            now = max(datetime.now(UTC), counter.time if counter else _EPOCH)
            operations: list[tuple] = []
            consumed = 0
            for change, pointer in zip(changes, pointers, strict=True):
                if pointer is not None and pointer["FileETag"] == change.file_etag and pointer["Deleted"] == change.deleted:
                    consumed += 1
                    continue  # this version was announced already
                if change.deleted and (pointer is None or pointer["Deleted"]):
                    consumed += 1
                    continue  # nothing announced to delete
                announced = _announce(change, pointer, last + 1, now)
                if len(operations) + len(announced) >= MAX_TRANSACTION_OPERATIONS:
                    break  # the counter needs the last place
                last += 1
                operations.extend(announced)
                consumed += 1
            if not operations:
                return 0, consumed, counter
            new_counter = {"PartitionKey": FEED_PARTITION, "RowKey": COUNTER, "Last": last, "LastTime": now}
            if counter is None:
                operations.insert(0, ("create", new_counter))
            else:
                operations.insert(0, _conditional_update(new_counter, counter.etag))
            try:
                results = await self.submit(operations)
            except TableTransactionError as error:
                if error.status_code not in (409, 412):
                    raise
                # Another writer committed first: read again, after a short random pause.
                await asyncio.sleep(random.uniform(0, min(0.002 * (attempt + 1), 0.05)))
                continue
            entries = sum(1 for operation in operations if operation[1]["RowKey"].startswith("e") and operation[0] == "create")
            etag = results[0].get("etag") if results else None
            return entries, consumed, _Counter(last, now, etag) if etag else None
        raise StorageContention(f"gave up appending to the change feed after {_RETRIES} conflicting writers")

    async def _counter(self) -> _Counter | None:
        entity = await self._get(COUNTER)
        return None if entity is None else _Counter(int(entity["Last"]), entity["LastTime"], entity.metadata["etag"])

    async def _pointers(self, changes: Sequence[Change], *, guess: bool) -> list[Any]:
        """The pointer entity of each change (None: none yet, or guessed new).

        Pointers of one study are neighbours in key order, so several changes of a study (a
        delete of the study, a bulk update, a PUT of a series) are read with one range query
        from the first to the last, instead of one point read each.
        """
        wanted: dict[tuple[str, str], list[str]] = defaultdict(list)
        for change in changes:
            if not (guess and change.probably_new):
                wanted[(change.key.partition, change.key.study)].append(pointer_row_key(change.key))
        found: dict[str, Any] = {}

        async def read(row_keys: list[str]) -> None:
            if len(row_keys) < _RANGE_READ_FROM:
                for row_key, entity in zip(row_keys, await asyncio.gather(*map(self._get, row_keys)), strict=True):
                    found[row_key] = entity
                return
            query = "PartitionKey eq @pk and RowKey ge @low and RowKey le @high"
            parameters = {"pk": FEED_PARTITION, "low": min(row_keys), "high": max(row_keys)}
            async for entity in self.entities(query, parameters):
                found[entity["RowKey"]] = entity

        await asyncio.gather(*(read(row_keys) for row_keys in wanted.values()))
        return [found.get(pointer_row_key(change.key)) for change in changes]

    async def _get(self, row_key: str) -> Any:
        return await self.point_read(FEED_PARTITION, row_key)

    async def snapshot(self) -> tuple[int, list[FeedEntry], list[Pointer]]:
        """The counter, every entry and every pointer: the whole feed, for the consistency checker only."""
        last, entries, pointers = 0, [], []
        async for entity in self.entities("PartitionKey eq @pk", {"pk": FEED_PARTITION}):
            row_key = entity["RowKey"]
            if row_key == COUNTER:
                last = int(entity["Last"])
            elif row_key.startswith("e"):
                entries.append(_entry(entity))
            else:
                partition, study, series, sop = row_key[1:].split("|")
                key = InstanceKey(partition, study, series, sop)
                pointers.append(Pointer(key, int(entity["Latest"]), entity["FileETag"], bool(entity["Deleted"])))
        return last, entries, pointers

    async def latest(self) -> FeedEntry | None:
        """The entry with the highest sequence, or None when the feed is empty."""
        last = await self.last_sequence()
        return _entry(await self._get(entry_row_key(last))) if last else None

    async def last_sequence(self) -> int:
        """The highest sequence used (0 for an empty feed)."""
        counter = await self._counter()
        return counter.last if counter else 0

    async def entries(self, first: int, last: int) -> list[FeedEntry]:
        """Entries ``first`` to ``last`` (inclusive), by sequence: one key-range query."""
        query = "PartitionKey eq @pk and RowKey ge @low and RowKey le @high"
        parameters = {"pk": FEED_PARTITION, "low": entry_row_key(first), "high": entry_row_key(last)}
        return [_entry(entity) async for entity in self.entities(query, parameters)]

    async def read(self, start: datetime | None, end: datetime | None, offset: int, limit: int) -> list[FeedEntry]:
        """Entries with ``start <= Timestamp < end``, skipping ``offset``, at most ``limit``, by sequence."""
        last = await self.last_sequence()
        first = await self._first_at_or_after(start, last) if start else 1
        stop = await self._first_at_or_after(end, last) if end else last + 1
        low, high = first + offset, min(first + offset + limit, stop)
        if low >= high:
            return []
        return await self.entries(low, high - 1)

    async def _first_at_or_after(self, moment: datetime, last: int) -> int:
        """The lowest sequence whose time is at least ``moment`` (``last + 1`` when none): bisection."""
        low, high = 1, last + 1
        while low < high:
            middle = (low + high) // 2
            entity = await self._get(entry_row_key(middle))
            if entity["Time"] >= moment:
                high = middle
            else:
                low = middle + 1
        return low


def _fitting(changes: Sequence[Change]) -> Sequence[Change]:
    """The longest prefix of ``changes`` whose operations surely fit one transaction with the counter."""
    used = 1
    for count, change in enumerate(changes):
        used += 2 if change.probably_new else 3
        if used > MAX_TRANSACTION_OPERATIONS:
            return changes[:count]
    return changes


def _conditional_update(entity: dict, etag: str) -> tuple:
    options = {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}
    return ("update", entity, options)


async def _known(counter: _Counter) -> _Counter:
    return counter


def _announce(change: Change, pointer: Any, sequence: int, now: datetime) -> list[tuple]:
    """The operations that add entry ``sequence`` for ``change`` and supersede the instance's previous entry."""
    key = change.key
    if change.deleted:
        action, state = DELETE, DELETED
    else:
        action, state = (CREATE if pointer is None or pointer["Deleted"] else UPDATE), CURRENT
    entry = {
        "PartitionKey": FEED_PARTITION,
        "RowKey": entry_row_key(sequence),
        "Sequence": sequence,
        "Action": action,
        "State": state,
        "Time": now,
        "PartitionName": key.partition,
        "StudyInstanceUID": key.study,
        "SeriesInstanceUID": key.series,
        "SOPInstanceUID": key.sop,
        "FilePath": change.path,
    }
    new_pointer = {
        "PartitionKey": FEED_PARTITION,
        "RowKey": pointer_row_key(key),
        "Latest": sequence,
        "FileETag": change.file_etag,
        "Deleted": change.deleted,
    }
    operations: list[tuple] = [("create", entry)]
    if pointer is None:
        operations.append(("create", new_pointer))
        return operations
    operations.append(_conditional_update(new_pointer, pointer.metadata["etag"]))
    if not pointer["Deleted"]:
        superseded = {
            "PartitionKey": FEED_PARTITION,
            "RowKey": entry_row_key(int(pointer["Latest"])),
            "State": DELETED if change.deleted else REPLACED,
        }
        operations.append(("update", superseded, {"mode": UpdateMode.MERGE}))
    return operations
