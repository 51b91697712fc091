"""The extended query tag registry and the errors of its tags, in Azure Table Storage.

==================================  ========================  ===================================
table                               PartitionKey              RowKey
==================================  ========================  ===================================
``{prefix}extendedquerytags``       ``tags``                  ``{tag}`` (8 hex digits)
``{prefix}extendedquerytagerrors``  ``{tag}``                 ``{partition}|{study}|{series}|{sop}``
==================================  ========================  ===================================

The registry is one partition of at most 128 entities: one query reads it whole. An error
row is keyed by its instance, so recording it again (a reindex resumed, a store retried)
replaces it instead of counting it twice. Changes to a tag are conditional on its ETag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableServiceClient

from dicom_core.dicom.extended_tags import LEVELS, TagDeclaration
from dicom_core.storage.keys import EXTENDED_TAGS_PARTITION, instance_path_key, parse_instance_path_key
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import ExtendedQueryTagRecord, TagErrorRecord
from dicom_core.storage.tables import MAX_TRANSACTION_OPERATIONS, Table

_LEVEL_NAMES = {level: name for name, level in LEVELS.items()}


class TagExists(Exception):
    """A tag of the request is in the registry already."""


class TagChanged(Exception):
    """The tag changed (or went) since it was read."""


def _entity(record: ExtendedQueryTagRecord) -> dict:
    declared = record.declaration
    return {
        "PartitionKey": EXTENDED_TAGS_PARTITION,
        "RowKey": declared.path,
        "VR": declared.vr,
        "PrivateCreator": declared.private_creator or "",
        "Level": _LEVEL_NAMES[declared.level],
        "Status": record.status,
        "QueryStatus": record.query_status,
        "OperationId": record.operation_id or "",
        "HasErrors": record.has_errors,
    }


def _record(entity: TableEntity) -> ExtendedQueryTagRecord:
    declared = TagDeclaration(
        int(entity["RowKey"], 16), entity["VR"], entity.get("PrivateCreator") or None, LEVELS[entity["Level"]]
    )
    return ExtendedQueryTagRecord(
        declaration=declared,
        status=entity["Status"],
        query_status=entity["QueryStatus"],
        operation_id=entity.get("OperationId") or None,
        has_errors=bool(entity.get("HasErrors")),
        version=str(entity.metadata.get("etag", "")),
    )


class ExtendedTagStore:
    """The ``{prefix}extendedquerytags`` registry and the ``{prefix}extendedquerytagerrors`` table."""

    def __init__(self, service: TableServiceClient, table_prefix: str) -> None:
        self._tags = Table(service, f"{table_prefix}extendedquerytags")
        self._errors = Table(service, f"{table_prefix}extendedquerytagerrors")

    async def prepare(self) -> None:
        await self._tags.prepare()
        await self._errors.prepare()

    # -- the registry ----------------------------------------------------------------------------------

    async def all(self) -> list[ExtendedQueryTagRecord]:
        """Every tag, in tag order: one query."""
        return [_record(entity) async for entity in self._tags.entities("PartitionKey eq @pk", {"pk": EXTENDED_TAGS_PARTITION})]

    async def get(self, path: str) -> ExtendedQueryTagRecord | None:
        entity = await self._tags.point_read(EXTENDED_TAGS_PARTITION, path)
        return None if entity is None else _record(entity)

    async def create(self, records: list[ExtendedQueryTagRecord]) -> None:
        """Add tags all or none; TagExists when one is there.

        They share the PartitionKey, so each 100 go in one transaction; when a later
        transaction fails, the tags of the earlier ones are removed again.
        """
        created: list[str] = []
        try:
            for start in range(0, len(records), MAX_TRANSACTION_OPERATIONS):
                batch = records[start : start + MAX_TRANSACTION_OPERATIONS]
                await self._tags.submit([("create", _entity(record)) for record in batch])
                created += [record.declaration.path for record in batch]
        except (ResourceExistsError, TableTransactionError) as error:
            for path in created:
                await self.remove(path)
            if isinstance(error, ResourceExistsError) or error.error_code == "EntityAlreadyExists":
                raise TagExists() from None
            raise

    async def replace(self, record: ExtendedQueryTagRecord) -> ExtendedQueryTagRecord:
        """Write ``record`` over the tag it was read as; TagChanged when the tag changed meanwhile."""
        try:
            metadata = await self._tags.client.update_entity(
                _entity(record), mode=UpdateMode.REPLACE, etag=record.version, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise TagChanged() from None
        return ExtendedQueryTagRecord(
            record.declaration, record.status, record.query_status, record.operation_id, record.has_errors,
            str(metadata.get("etag", "")),
        )  # fmt: skip

    async def remove(self, path: str) -> None:
        await self._tags.client.delete_entity(EXTENDED_TAGS_PARTITION, path)  # no error when it is gone

    async def flag_errors(self, path: str) -> None:
        """Mark a tag as having errors (idempotent: a merge of one property)."""
        entity = {"PartitionKey": EXTENDED_TAGS_PARTITION, "RowKey": path, "HasErrors": True}
        try:
            await self._tags.client.update_entity(entity, mode=UpdateMode.MERGE)
        except ResourceNotFoundError:
            return  # deleted meanwhile

    # -- errors ------------------------------------------------------------------------------------------

    async def add_errors(self, errors: Iterable[tuple[str, InstanceKey, str]]) -> None:
        """Record (tag, instance, message) errors, replacing an instance's earlier error of the same tag."""
        by_tag: dict[str, list[dict]] = {}
        for path, key, message in errors:
            by_tag.setdefault(path, []).append(
                {"PartitionKey": path, "RowKey": instance_path_key(key), "Message": message[:1024], "Created": datetime.now(UTC)}
            )
        for path, rows in by_tag.items():
            unique = list({row["RowKey"]: row for row in rows}.values())
            for start in range(0, len(unique), MAX_TRANSACTION_OPERATIONS):
                batch = unique[start : start + MAX_TRANSACTION_OPERATIONS]
                await self._errors.submit([("upsert", row, {"mode": UpdateMode.REPLACE}) for row in batch])
            await self.flag_errors(path)

    async def errors(self, path: str, offset: int, limit: int) -> list[TagErrorRecord]:
        """One page of a tag's errors, in instance order (pages of Table Storage up to the offset are read)."""
        found: list[TagErrorRecord] = []
        position = 0
        async for entity in self._errors.entities("PartitionKey eq @pk", {"pk": path}, page_size=min(offset + limit, 1000)):
            if position >= offset:
                found.append(
                    TagErrorRecord(path, parse_instance_path_key(entity["RowKey"]), entity["Message"], entity["Created"])
                )
                if len(found) >= limit:
                    break
            position += 1
        return found

    async def count_errors(self, path: str) -> int:
        """How many instances have an error of the tag: the keys of its partition, nothing else."""
        return sum([len(page) async for page in self._errors.pages("PartitionKey eq @pk", {"pk": path}, ["RowKey"])])

    async def error_keys(self, path: str) -> AsyncIterator[str]:
        async for entity in self._errors.entities("PartitionKey eq @pk", {"pk": path}, ["RowKey"]):
            yield entity["RowKey"]

    async def remove_errors(self, path: str, row_keys: list[str]) -> None:
        for start in range(0, len(row_keys), MAX_TRANSACTION_OPERATIONS):
            batch = row_keys[start : start + MAX_TRANSACTION_OPERATIONS]
            await self._errors.submit([("delete", {"PartitionKey": path, "RowKey": rk}) for rk in batch])
