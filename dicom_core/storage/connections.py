"""Build Azure SDK clients from the ``DicomLake`` / ``DicomIndex`` settings."""

from __future__ import annotations

import os

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables.aio import TableServiceClient
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.filedatalake.aio import DataLakeServiceClient

from dicom_core.settings import Connection
from dicom_core.storage.tables import RequestStatistics, lake_hooks, table_hooks

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


# A streamed read (storage/lake.py) yields the bytes of a Get Blob in chunks of at most this size. The
# SDK's default is 4 KiB: a 513 KB frame then went through the server in 128 chunks, and at 64 KiB its
# CPU per frame fell by a quarter (4.3 to 3.2 ms, 300 frames, 10 in flight). Since frames stream to the
# client as they arrive (each chunk one send through the response), 256 KiB took 0.3 ms more off a frame.
READ_CHUNK_BYTES = 256 * 1024


def _transport() -> AioHttpTransport:
    """The HTTP transport of one client.

    aiohttp honours proxy variables and ~/.netrc only with ``trust_env``, and then
    looks both up on every request (about a sixth of the CPU of a store, measured
    with py-spy). So the environment is trusted only when a proxy is configured.
    """
    proxied = any(os.environ.get(name) or os.environ.get(name.lower()) for name in _PROXY_VARIABLES)
    return AioHttpTransport(use_env_settings=proxied, connection_data_block_size=READ_CHUNK_BYTES)


def credential(connection: Connection) -> AsyncTokenCredential:
    """The identity of an identity-based connection: its user-assigned managed identity, else the default chain."""
    # Imported here: azure-identity is only needed for identity-based connections.
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if connection.client_id:
        return ManagedIdentityCredential(client_id=connection.client_id)
    return DefaultAzureCredential()


def _missing(connection_name: str, what: str) -> ValueError:
    return ValueError(
        f"setting {connection_name} has no connection string and no {connection_name}__{what}: set one of them (docs/settings.md)"
    )


# Uploads above this size go in blocks of this size, so an upload holds at most
# (block size x upload concurrency) in memory whatever the size of the instance. Reads do not
# go through the SDK's downloader (storage/lake.py streams Get Blob), so they need no sizes here.
TRANSFER_BLOCK_BYTES = 4 * 1024 * 1024
_TRANSFER_OPTIONS = {
    "max_single_put_size": TRANSFER_BLOCK_BYTES,
    "max_block_size": TRANSFER_BLOCK_BYTES,
}


def _options(hooks: dict) -> dict:
    return {"transport": _transport(), **hooks}


def blob_service(connection: Connection, statistics: RequestStatistics) -> BlobServiceClient:
    options = _options(lake_hooks(statistics)) | _TRANSFER_OPTIONS
    if connection.connection_string:
        return BlobServiceClient.from_connection_string(connection.connection_string, **options)
    if not connection.blob_service_uri:
        raise _missing("DicomLake", "blobServiceUri")
    return BlobServiceClient(connection.blob_service_uri, credential=credential(connection), **options)


def datalake_service(connection: Connection, statistics: RequestStatistics) -> DataLakeServiceClient:
    options = _options(lake_hooks(statistics))
    if connection.connection_string:
        return DataLakeServiceClient.from_connection_string(connection.connection_string, **options)
    uri = connection.dfs_service_uri or (connection.blob_service_uri or "").replace(".blob.", ".dfs.")
    if not uri:
        raise _missing("DicomLake", "dfsServiceUri")
    return DataLakeServiceClient(uri, credential=credential(connection), **options)


def table_service(connection: Connection, statistics: RequestStatistics) -> TableServiceClient:
    options = _options(table_hooks(statistics))
    if connection.connection_string:
        return TableServiceClient.from_connection_string(connection.connection_string, **options)
    if not connection.table_service_uri:
        raise _missing("DicomIndex", "tableServiceUri")
    return TableServiceClient(connection.table_service_uri, credential=credential(connection), **options)
