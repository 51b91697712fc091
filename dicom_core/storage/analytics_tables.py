"""The analytics adapter: Delta Lake tables of the archive's metadata in the lake, written with delta-rs.

::

    AHDS/{workspace}/dicom/{service}/analytics/instances/   one row per current instance
    AHDS/{workspace}/dicom/{service}/analytics/series/      one row per current series
    AHDS/{workspace}/dicom/{service}/analytics/studies/     one row per current study
    AHDS/{workspace}/dicom/{service}/analytics/sync.lock    the writers' lease (not a table)

Protocol: reader version 1, writer version 2, no table features (no deletion
vectors, column mapping or timestampNtz), no partition columns. That is the floor
of the Delta protocol, so Fabric, Databricks, Synapse Spark, DuckDB, Polars and
every other reader read the tables.

Exactly once: every write is one Delta commit that removes the rows of the keys it
touches and adds their current rows (an overwrite with a ``filePath IN (...)`` or
``folderPath IN (...)`` predicate), and the same commit carries an application
transaction ``(dicom-analytics, last change-feed sequence applied)``. The data
and the position in the feed are one atomic commit: a crash before it leaves both
as they were, a crash after it leaves both moved, and the next sync starts after
the recorded sequence.

Both endpoints take the same code: ``az://`` on the blob endpoint (Azurite, flat
accounts, or any account given a BlobEndpoint), ``abfss://`` on a hierarchical
namespace account; credentials come from the ``DicomLake`` setting (its key or
SAS, or a token of the same identity the SDK clients use). delta-rs finds new
commits by listing ``_delta_log/`` with List Blobs ``startFrom``; Azure honours it,
and so does Azurite from 3.37.0 (package.json pins it). An emulator that ignores it
makes every commit after the second fail with "Invalid table version": the error
says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob.aio import BlobLeaseClient, BlobServiceClient
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from dicom_core.settings import DEVELOPMENT_STORAGE, Connection
from dicom_core.storage import analytics_schema as schema
from dicom_core.storage.connections import credential

APP_ID = "dicom-analytics"
_STORAGE_SCOPE = "https://storage.azure.com/.default"
_TABLE_CONFIGURATION = {
    # Old versions stay readable a week (Delta's default), so a long Spark job never loses its files.
    "delta.deletedFileRetentionDuration": "interval 7 days",
    "delta.logRetentionDuration": "interval 30 days",
    "delta.checkpointInterval": "20",
}
LEASE_SECONDS = 60  # Blob leases last 15-60 s (or forever); a crashed holder's lease ends by itself
_LOCK_BLOB = "sync.lock"
_DESCRIPTIONS = {
    schema.INSTANCES: "One row per current DICOM instance: attributes, filePath in the lake, DICOM JSON",
    schema.SERIES: "One row per current DICOM series: attributes and instance count",
    schema.STUDIES: "One row per current DICOM study: attributes, counts and ModalitiesInStudy",
}


class AnalyticsBusy(Exception):
    """Another host holds the analytics lease: it is syncing now."""


class StartFromIgnored(RuntimeError):
    """The storage ignores List Blobs ``startFrom``, which delta-rs relies on."""


def _connection_values(connection_string: str) -> dict[str, str]:
    if connection_string.strip().rstrip(";") == DEVELOPMENT_STORAGE:
        # The SDKs expand this shorthand themselves; delta-rs does not: Azurite on its default ports.
        from dicom_core.local.azurite import connection_string as azurite_connection_string

        connection_string = azurite_connection_string("127.0.0.1", 10000, 10001, 10002)
    values = {}
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip():
            values[name.strip().lower()] = value.strip()
    return values


@dataclass(frozen=True)
class DeltaLocation:
    """Where the tables are and how delta-rs reaches them."""

    base_uri: str  # az://{fs}/{root}analytics or abfss://{fs}@{account}.dfs.{suffix}/{root}analytics
    storage_options: dict[str, str]


async def delta_location(connection: Connection, file_system: str, folder: str, *, hierarchical: bool) -> DeltaLocation:
    """The URI of ``folder`` of ``file_system`` and delta-rs storage options, from the ``DicomLake`` connection."""
    folder = folder.strip("/")
    if connection.connection_string:
        values = _connection_values(connection.connection_string)
        endpoint = values.get("blobendpoint")
        # A SAS connection string may name only its endpoint: the account is the host's first label.
        account = values.get("accountname") or (urlparse(endpoint or "").hostname or "").partition(".")[0]
        options = {"account_name": account}
        if values.get("accountkey"):
            options["account_key"] = values["accountkey"]
        if values.get("sharedaccesssignature"):
            options["sas_key"] = values["sharedaccesssignature"]
        suffix = values.get("endpointsuffix", "core.windows.net")
    else:
        parsed = urlparse(connection.blob_service_uri or connection.dfs_service_uri or "")
        if not parsed.hostname:
            raise ValueError("setting DicomLake has no connection string and no DicomLake__blobServiceUri")
        account, _, rest = parsed.hostname.partition(".")
        suffix = rest.partition(".")[2]
        endpoint = None
        # The same identity as the SDK clients; a token lasts an hour and a sync takes it anew.
        identity = credential(connection)
        try:
            token = await identity.get_token(_STORAGE_SCOPE)
        finally:
            await identity.close()
        options = {"account_name": account, "bearer_token": token.token}
    if endpoint:
        options["azure_storage_endpoint"] = endpoint.rstrip("/")
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
        return DeltaLocation(f"az://{file_system}/{folder}", options)
    if hierarchical:
        return DeltaLocation(f"abfss://{file_system}@{account}.dfs.{suffix}/{folder}", options)
    return DeltaLocation(f"az://{file_system}/{folder}", options)


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _commit(version: int) -> CommitProperties:
    return CommitProperties(app_transactions=[Transaction(APP_ID, version)])


@dataclass(frozen=True)
class TableStatus:
    name: str
    version: int
    applied_sequence: int
    files: int
    rows: int


class AnalyticsTables:
    """The three analytics tables; every method that touches Delta runs in a worker thread (delta-rs blocks)."""

    def __init__(self, location: DeltaLocation) -> None:
        self.location = location

    def uri(self, name: str) -> str:
        return f"{self.location.base_uri}/{name}"

    def _open(self, name: str) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(name), storage_options=self.location.storage_options)
        except TableNotFoundError:
            return None

    def _create(self, name: str) -> None:
        DeltaTable.create(
            self.uri(name),
            schema.SCHEMAS[name](),
            mode="ignore",
            name=name,
            description=_DESCRIPTIONS[name],
            configuration=_TABLE_CONFIGURATION,
            storage_options=self.location.storage_options,
        )

    async def applied_sequences(self) -> dict[str, int]:
        """The last change-feed sequence applied to each table (0 for a table not yet written)."""

        def read() -> dict[str, int]:
            versions = {}
            for name in schema.TABLE_NAMES:
                table = self._open(name)
                versions[name] = (table.transaction_version(APP_ID) or 0) if table is not None else 0
            return versions

        return await asyncio.to_thread(read)

    async def replace(self, name: str, keys: Sequence[str], rows: Iterable[dict[str, Any]], sequence: int) -> None:
        """In one commit: drop the rows of ``keys``, add ``rows`` (each of one of the keys), record ``sequence``."""
        data = schema.table(name, rows)
        predicate = f"{schema.KEY_COLUMNS[name]} IN ({', '.join(map(_quoted, keys))})" if keys else "false"

        def write() -> None:
            if self._open(name) is None:
                self._create(name)
            try:
                write_deltalake(
                    self.uri(name),
                    data,
                    mode="overwrite",
                    predicate=predicate,
                    schema_mode="merge",  # columns added since (extended query tags) join the schema
                    storage_options=self.location.storage_options,
                    commit_properties=_commit(sequence),
                )
            except DeltaError as error:
                if "Invalid table version" in str(error):
                    raise StartFromIgnored(
                        f"delta-rs could not commit to {self.uri(name)} ({error}): the storage returned log files "
                        "before the List Blobs startFrom it asked for. Azure honours startFrom; Azurite does from "
                        "3.37.0 (run `npm ci`)."
                    ) from error
                raise

        await asyncio.to_thread(write)

    async def reset(self, sequence: int) -> None:
        """Empty every table (schema rewritten from scratch) and record ``sequence``: the start of a rebuild."""

        def write() -> None:
            for name in schema.TABLE_NAMES:
                if self._open(name) is None:
                    self._create(name)
                write_deltalake(
                    self.uri(name),
                    schema.table(name, []),
                    mode="overwrite",
                    schema_mode="overwrite",
                    storage_options=self.location.storage_options,
                    commit_properties=_commit(sequence),
                )

        await asyncio.to_thread(write)

    async def maintain(self, *, max_files: int, retention_hours: int) -> dict[str, int]:
        """Compact a table of more than ``max_files`` files, then vacuum files removed over ``retention_hours`` ago.

        Returns the number of files each table was compacted from (0: left alone).
        Compaction rewrites small files into large ones without changing a row (readers see
        the same data before and after); vacuum deletes only files no version within the
        retention needs.
        """

        def run() -> dict[str, int]:
            compacted = {}
            for name in schema.TABLE_NAMES:
                table = self._open(name)
                if table is None:
                    continue
                files = len(table.file_uris())
                compacted[name] = 0
                if files > max_files:
                    table.optimize.compact()
                    compacted[name] = files
                table = self._open(name)
                table.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False)
            return compacted

        return await asyncio.to_thread(run)

    async def status(self) -> list[TableStatus]:
        def read() -> list[TableStatus]:
            statuses = []
            for name in schema.TABLE_NAMES:
                table = self._open(name)
                if table is None:
                    continue
                statuses.append(
                    TableStatus(
                        name,
                        table.version(),
                        table.transaction_version(APP_ID) or 0,
                        len(table.file_uris()),
                        table.count(),
                    )
                )
            return statuses

        return await asyncio.to_thread(read)


class SyncLease:
    """One writer at a time: a blob lease on ``analytics/sync.lock``; a crashed holder's lease expires in a minute."""

    def __init__(self, blobs: BlobServiceClient, file_system: str, folder: str) -> None:
        self._blob = blobs.get_blob_client(file_system, f"{folder.rstrip('/')}/{_LOCK_BLOB}")
        self._lease: BlobLeaseClient | None = None

    async def acquire(self) -> None:
        """Take the lease; AnalyticsBusy when another host holds it."""
        with contextlib.suppress(ResourceExistsError):
            await self._blob.upload_blob(b"", overwrite=False)
        try:
            self._lease = await self._blob.acquire_lease(lease_duration=LEASE_SECONDS)
        except HttpResponseError as error:
            if error.status_code == 409:
                raise AnalyticsBusy("another host is syncing the analytics tables") from None
            raise

    async def renew(self) -> None:
        """Keep the lease for another minute (between batches); raises when it was lost."""
        if self._lease is not None:
            await self._lease.renew()

    async def release(self) -> None:
        if self._lease is not None:
            with contextlib.suppress(HttpResponseError):
                await self._lease.release()
            self._lease = None
