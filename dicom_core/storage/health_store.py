"""The last health-check outcome in ``{prefix}health``, so that every host reports the same status."""

from __future__ import annotations

from typing import Any

from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableServiceClient

from dicom_core.storage.tables import Table

_PARTITION = "health"
_ROW = "lake"


class HealthStore(Table):
    """One entity: the outcome of the latest check of the lake."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        super().__init__(service, f"{table_prefix}health")
        self.last: dict[str, Any] | None = None  # this host's latest outcome, for when the table is unreachable

    async def save(self, properties: dict[str, Any]) -> None:
        """Replace the recorded outcome with ``properties`` (None values are left out)."""
        entity = {"PartitionKey": _PARTITION, "RowKey": _ROW} | {k: v for k, v in properties.items() if v is not None}
        await self.client.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def load(self) -> dict[str, Any] | None:
        entity = await self.point_read(_PARTITION, _ROW)
        return None if entity is None else dict(entity)
