"""Build Azure SDK clients from the ``DicomLake`` / ``DicomIndex`` settings."""

from __future__ import annotations

import os

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables.aio import TableServiceClient
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.filedatalake.aio import DataLakeServiceClient

from dicom_core.settings import Connection

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def _transport() -> AioHttpTransport:
    """The HTTP transport of one client.

    aiohttp honours proxy variables and ~/.netrc only with ``trust_env``, and then
    looks both up on every request (about a sixth of the CPU of a store, measured
    with py-spy). So the environment is trusted only when a proxy is configured.
    """
    proxied = any(os.environ.get(name) or os.environ.get(name.lower()) for name in _PROXY_VARIABLES)
    return AioHttpTransport(use_env_settings=proxied)


def credential(connection: Connection) -> AsyncTokenCredential:
    """The identity of an identity-based connection: its user-assigned managed identity, else the default chain."""
    # Imported here: azure-identity is only needed for identity-based connections.
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if connection.client_id:
        return ManagedIdentityCredential(client_id=connection.client_id)
    return DefaultAzureCredential()


def _missing(connection_name: str, what: str) -> ValueError:
    return ValueError(
        f"setting {connection_name} has no connection string and no {connection_name}__{what}: "
        "set one of them (design.md, Settings)"
    )


# Uploads above this size go in blocks of this size, so an upload holds at most
# (block size x upload concurrency) in memory whatever the size of the instance.
TRANSFER_BLOCK_BYTES = 4 * 1024 * 1024
_TRANSFER_OPTIONS = {
    "max_single_put_size": TRANSFER_BLOCK_BYTES,
    "max_block_size": TRANSFER_BLOCK_BYTES,
    "max_single_get_size": TRANSFER_BLOCK_BYTES,
    "max_chunk_get_size": TRANSFER_BLOCK_BYTES,
}


def blob_service(connection: Connection) -> BlobServiceClient:
    if connection.connection_string:
        return BlobServiceClient.from_connection_string(connection.connection_string, transport=_transport(), **_TRANSFER_OPTIONS)
    if not connection.blob_service_uri:
        raise _missing("DicomLake", "blobServiceUri")
    return BlobServiceClient(
        connection.blob_service_uri, credential=credential(connection), transport=_transport(), **_TRANSFER_OPTIONS
    )


def datalake_service(connection: Connection) -> DataLakeServiceClient:
    if connection.connection_string:
        return DataLakeServiceClient.from_connection_string(connection.connection_string, transport=_transport())
    uri = connection.dfs_service_uri or (connection.blob_service_uri or "").replace(".blob.", ".dfs.")
    if not uri:
        raise _missing("DicomLake", "dfsServiceUri")
    return DataLakeServiceClient(uri, credential=credential(connection), transport=_transport())


def table_service(connection: Connection) -> TableServiceClient:
    if connection.connection_string:
        return TableServiceClient.from_connection_string(connection.connection_string, transport=_transport())
    if not connection.table_service_uri:
        raise _missing("DicomIndex", "tableServiceUri")
    return TableServiceClient(connection.table_service_uri, credential=credential(connection), transport=_transport())
