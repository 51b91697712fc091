"""The delete journal: one row per instance being deleted, and who is deleting in a study, in ``{prefix}deletes``.

==========================  ======================  ==========================================
PartitionKey                RowKey                  holds
==========================  ======================  ==========================================
``{partition}|{study}``     ``{series}|{sop}``      ``Job``, ``Path``, ``FileETag``, ``Created``
``{partition}|{study}``     ``~deleting``           ``Jobs``: the deletes running in the study
==========================  ======================  ==========================================

A delete creates the rows of the instances it removes, marks itself running in its study
(``begin``), deletes the files, announces the deletes, deletes the index entities,
recounts, removes its rows, and unmarks itself (``end``). Every step is idempotent, so a
row that is still there is an interrupted delete that any later delete of that study, a
reconcile of one of its paths or a reindex finishes at once.

The marker lets a store that runs at the same time tell whether a delete could have
removed an instance it just stored (operations/store.py): it reads the marker before
writing files and after writing and announcing entities, and settles its instances when
a delete was running or the marker changed in between. Marked only once its rows exist,
a running delete may remove only instances that have a row, so the store reads which in
the journal. A job whose process died stays marked until it is older than the longest a
request may run (then it cannot be running any more).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableServiceClient

from dicom_core.storage.errors import StorageContention
from dicom_core.storage.keys import instance_identity, instance_keys, key_of, study_partition_key
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.tables import MAX_TRANSACTION_OPERATIONS, Table

_MARKER = "~deleting"  # sorts after every "{series}|{sop}" RowKey (UIDs are digits and dots)
_RETRIES = 50


@dataclass(frozen=True)
class DeleteMarker:
    """The deletes running in one study: ``version`` changes whenever one begins or ends."""

    version: str
    jobs: frozenset[str]


@dataclass(frozen=True)
class JournalRow:
    key: InstanceKey
    job: str
    path: str  # the file to delete; "" keeps it (reconcile drops an entry whose file is not that instance)
    created: datetime
    # The version of the file the delete found: once that delete is not running, its row removes only this
    # version (operations/delete.py). "" when there was no file, and in rows written before: any.
    etag: str = ""


class DeleteJournal(Table):
    """Rows of deletes in progress, keyed like the instances table."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        super().__init__(service, f"{table_prefix}deletes")

    async def claim(self, rows: list[JournalRow]) -> list[JournalRow]:
        """Create the rows of one study; those that another delete holds already are left out of the result (it runs them too)."""
        claimed: list[JournalRow] = []
        for start in range(0, len(rows), MAX_TRANSACTION_OPERATIONS):
            chunk = rows[start : start + MAX_TRANSACTION_OPERATIONS]
            try:
                await self.submit([("create", _entity(row)) for row in chunk])
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
        query = "PartitionKey eq @pk and RowKey lt @marker"
        parameters = {"pk": study_partition_key(partition, study), "marker": _MARKER}
        async for entity in self.entities(query, parameters):
            yield _row(entity)

    async def all_rows(self) -> AsyncIterator[JournalRow]:
        """Every row (reindex: the journal is small, it holds only deletes in progress)."""
        async for entity in self.client.list_entities():
            if entity["RowKey"] != _MARKER:
                yield _row(entity)

    async def marker(self, partition: str, study: str) -> DeleteMarker | None:
        """The deletes running in ``study``, or None when no delete ever ran there."""
        entity = await self.point_read(study_partition_key(partition, study), _MARKER)
        if entity is None:
            return None
        return DeleteMarker(entity.metadata["etag"], frozenset(json.loads(entity.get("Jobs") or "{}")))

    async def begin(self, partition: str, study: str, job: str) -> None:
        """Mark delete ``job`` running in ``study``."""
        await self._change_jobs(partition, study, lambda jobs: jobs | {job: datetime.now(UTC).isoformat()})

    async def end(self, partition: str, study: str, job: str, longest_request: timedelta) -> None:
        """Unmark ``job``, and any job older than ``longest_request`` (its process died: it cannot still run)."""
        cutoff = (datetime.now(UTC) - longest_request).isoformat()
        await self._change_jobs(
            partition, study, lambda jobs: {other: since for other, since in jobs.items() if other != job and since > cutoff}
        )

    async def _change_jobs(self, partition: str, study: str, change) -> None:
        pk = study_partition_key(partition, study)
        for _ in range(_RETRIES):
            current = await self.point_read(pk, _MARKER)
            jobs = change(json.loads(current.get("Jobs") or "{}") if current is not None else {})
            entity = {"PartitionKey": pk, "RowKey": _MARKER, "Jobs": json.dumps(jobs, sort_keys=True)}
            try:
                if current is None:
                    await self.client.create_entity(entity)
                else:
                    unchanged = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
                    await self.client.update_entity(entity, mode=UpdateMode.REPLACE, **unchanged)
                return
            except (ResourceExistsError, ResourceModifiedError):
                continue  # another delete began or ended meanwhile
        raise StorageContention(f"gave up marking a delete in study {pk} after {_RETRIES} conflicts")

    async def release(self, rows: list[JournalRow]) -> None:
        for row in rows:
            await self.client.delete_entity(*instance_keys(row.key))


def _entity(row: JournalRow) -> dict:
    return {
        **instance_identity(row.key),
        "Job": row.job,
        "Path": row.path,
        "FileETag": row.etag,
        "Created": row.created,
    }


def _row(entity: dict) -> JournalRow:
    created = entity.get("Created") or datetime.now(UTC)
    return JournalRow(key_of(entity), entity["Job"], entity["Path"], created, entity.get("FileETag") or "")
