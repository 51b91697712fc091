"""Long-running operations in Azure Table Storage: their state, checkpoint and lease (docs/operations.md).

=======================  ================  ==========================================
table                    PartitionKey      RowKey
=======================  ================  ==========================================
``{prefix}operations``   ``operations``    ``{operation id}``: the operation
``{prefix}operations``   ``pending``       ``{operation id}``: while it is not finished
=======================  ================  ==========================================

Every write of an operation is conditional on the ETag it was read with. A worker takes
an operation by writing its lease (owner and expiry) that way, so of two workers racing
for one, exactly one write succeeds; each checkpoint renews the lease with the same
condition, so a worker whose lease another took over learns it at its next write and stops.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, UpdateMode
from azure.data.tables.aio import TableServiceClient

from dicom_core.storage.keys import OPERATIONS_PARTITION, PENDING_OPERATIONS_PARTITION
from dicom_core.storage.records import OperationRecord
from dicom_core.storage.tables import Table


class LeaseLost(Exception):
    """The operation changed since it was read: another worker holds it now."""


def _entity(record: OperationRecord) -> dict:
    entity = {
        "PartitionKey": OPERATIONS_PARTITION,
        "RowKey": record.id,
        "Type": record.type,
        "Status": record.status,
        "CreatedTime": record.created,
        "LastUpdatedTime": record.updated,
        "PercentComplete": record.percent_complete,
        "Resources": json.dumps(list(record.resources)),
        "Errors": json.dumps(list(record.errors)),
        "Parameters": json.dumps(record.parameters),
        "Checkpoint": json.dumps(record.checkpoint),
        "Done": record.done,
        "Total": record.total,
        "LeaseOwner": record.lease_owner or "",
    }
    if record.lease_until is not None:
        entity["LeaseUntil"] = record.lease_until
    return entity


def _record(entity: TableEntity) -> OperationRecord:
    return OperationRecord(
        id=entity["RowKey"],
        type=entity["Type"],
        status=entity["Status"],
        created=entity["CreatedTime"],
        updated=entity["LastUpdatedTime"],
        percent_complete=int(entity.get("PercentComplete") or 0),
        resources=tuple(json.loads(entity.get("Resources") or "[]")),
        errors=tuple(json.loads(entity.get("Errors") or "[]")),
        parameters=json.loads(entity.get("Parameters") or "{}"),
        checkpoint=json.loads(entity.get("Checkpoint") or "null"),
        done=int(entity.get("Done") or 0),
        total=int(entity.get("Total") or 0),
        lease_owner=entity.get("LeaseOwner") or None,
        lease_until=entity.get("LeaseUntil"),
        version=str(entity.metadata.get("etag", "")),
    )


class OperationStore(Table):
    """The ``{prefix}operations`` table."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        super().__init__(service, f"{table_prefix}operations")

    async def create(self, record: OperationRecord) -> None:
        """The operation, then its pending row: a worker finds only operations that exist."""
        await self.client.create_entity(_entity(record))
        await self.keep_pending(record.id)

    async def get(self, operation_id: str) -> OperationRecord | None:
        entity = await self.point_read(OPERATIONS_PARTITION, operation_id)
        return None if entity is None else _record(entity)

    async def pending(self) -> list[str]:
        """The ids of the operations not finished (in id order, which is random)."""
        entities = self.entities("PartitionKey eq @pk", {"pk": PENDING_OPERATIONS_PARTITION}, ["RowKey"])
        return [entity["RowKey"] async for entity in entities]

    async def save(self, record: OperationRecord) -> OperationRecord:
        """Write ``record`` over the version it was read at; LeaseLost when another write came first."""
        try:
            metadata = await self.client.update_entity(
                _entity(record), mode=UpdateMode.REPLACE, etag=record.version, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise LeaseLost() from None
        return replace(record, version=str(metadata.get("etag", "")))

    async def finish(self, record: OperationRecord) -> OperationRecord:
        """Save a finished operation and drop its pending row."""
        saved = await self.save(record)
        await self.client.delete_entity(PENDING_OPERATIONS_PARTITION, record.id)  # no error when it is gone
        return saved

    async def keep_pending(self, operation_id: str) -> None:
        """Write the pending row of an operation not finished (again: ``create`` may have died before it)."""
        await self.client.upsert_entity({"PartitionKey": PENDING_OPERATIONS_PARTITION, "RowKey": operation_id})

    async def forget_pending(self, operation_id: str) -> None:
        """Drop the pending row of an operation that is finished or gone (a crash between the two writes)."""
        await self.client.delete_entity(PENDING_OPERATIONS_PARTITION, operation_id)


def lease_free(record: OperationRecord, owner: str, now: datetime) -> bool:
    """Whether ``owner`` may take the operation: nobody holds it, its lease expired, or ``owner`` holds it."""
    return record.lease_owner in (None, owner) or record.lease_until is None or record.lease_until <= now
