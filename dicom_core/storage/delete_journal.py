"""The delete journal: one row per instance being deleted, in ``{prefix}deletes``.

==========================  ======================  ==========================================
PartitionKey                RowKey                  holds
==========================  ======================  ==========================================
``{partition}|{study}``     ``{series}|{sop}``      ``Job``, ``Indexed``, ``Path``, ``Created``
==========================  ======================  ==========================================

A delete first creates the rows of the instances it removes (create-only: a row that
exists belongs to another delete, which finishes that instance), then deletes the
files, announces the deletes, decrements the counts once per job and series (the
series and study entities remember the jobs applied) and deletes the index entities,
and removes its rows last. Every step is idempotent, so a row that is still there is
an interrupted delete that the next delete of that study, a reconcile of one of its
paths or a reindex finishes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableTransactionError
from azure.data.tables.aio import TableServiceClient

from dicom_core.storage.keys import instance_identity, instance_keys, key_of, study_partition_key
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.tables import Table

_TRANSACTION = 100


@dataclass(frozen=True)
class JournalRow:
    key: InstanceKey
    job: str
    indexed: bool  # whether an index entity existed when the delete began (it counts)
    path: str
    created: datetime


class DeleteJournal(Table):
    """Rows of deletes in progress, keyed like the instances table."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        super().__init__(service, f"{table_prefix}deletes")

    async def claim(self, rows: list[JournalRow]) -> list[JournalRow]:
        """Create the rows of one study; those that another delete holds already are left out of the result."""
        claimed: list[JournalRow] = []
        for start in range(0, len(rows), _TRANSACTION):
            chunk = rows[start : start + _TRANSACTION]
            try:
                await self.client.submit_transaction([("create", _entity(row)) for row in chunk])
                claimed.extend(chunk)
                continue
            except TableTransactionError as error:
                if error.status_code != 409:
                    raise
            for row in chunk:  # some rows exist: claim one by one
                try:
                    await self.client.create_entity(_entity(row))
                except ResourceExistsError:
                    continue
                claimed.append(row)
        return claimed

    async def rows_of_study(self, partition: str, study: str) -> AsyncIterator[JournalRow]:
        query = "PartitionKey eq @pk"
        async for entity in self.client.query_entities(query, parameters={"pk": study_partition_key(partition, study)}):
            yield _row(entity)

    async def all_rows(self) -> AsyncIterator[JournalRow]:
        """Every row (reindex: the journal is small, it holds only deletes in progress)."""
        async for entity in self.client.list_entities():
            yield _row(entity)

    async def release(self, rows: list[JournalRow]) -> None:
        for row in rows:
            await self.client.delete_entity(*instance_keys(row.key))


def _entity(row: JournalRow) -> dict:
    return {
        **instance_identity(row.key),
        "Job": row.job,
        "Indexed": row.indexed,
        "Path": row.path,
        "Created": row.created,
    }


def _row(entity: dict) -> JournalRow:
    created = entity.get("Created") or datetime.now(UTC)
    return JournalRow(key_of(entity), entity["Job"], bool(entity["Indexed"]), entity["Path"], created)
