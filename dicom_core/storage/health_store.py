"""The last health-check outcome in ``{prefix}health``, so that every host reports the same status."""

from __future__ import annotations

import contextlib
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

_PARTITION = "health"
_ROW = "lake"


class HealthStore:
    """One entity: the outcome of the latest check of the lake."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        self.table: TableClient = service.get_table_client(f"{table_prefix}health")
        self.last: dict[str, Any] | None = None  # this host's latest outcome, for when the table is unreachable

    async def prepare(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            await self.table.create_table()

    async def save(self, properties: dict[str, Any]) -> None:
        """Replace the recorded outcome with ``properties`` (None values are left out)."""
        entity = {"PartitionKey": _PARTITION, "RowKey": _ROW} | {k: v for k, v in properties.items() if v is not None}
        await self.table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def load(self) -> dict[str, Any] | None:
        try:
            return dict(await self.table.get_entity(_PARTITION, _ROW))
        except ResourceNotFoundError:
            return None
