"""The service in this process over a fresh Azurite, for the operation-rate benchmarks (export, bulk update).

``in_process_service`` starts Azurite, opens the storage and yields an HTTP client of the app (no
network, no server process), so an operation's rate is measured with its worker run directly and no
polling interval counted. ``store_archive`` fills it with ``studies`` of ``per_study`` CT instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

import httpx
from azure.storage.blob.aio import BlobServiceClient

from dicom_core.http.app import create_app
from dicom_core.local import azurite
from dicom_core.services import Services
from dicom_core.settings import Connection, Settings
from tests.dicom_files import new_instance
from tests.test_search import store


@dataclass
class InProcess:
    server: azurite.Azurite
    services: Services
    blobs: BlobServiceClient  # a client of the same account, for the raw-storage figures
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def in_process_service(name: str) -> AsyncIterator[InProcess]:
    server = azurite.start(Path(tempfile.mkdtemp(prefix=f"{name}-bench-")))
    try:
        connection = Connection(connection_string=server.connection_string)
        settings = Settings(lake=connection, index=connection, file_system="benchlake", table_prefix="bench")
        services = await Services.open(settings)
        blobs = BlobServiceClient.from_connection_string(server.connection_string)
        app = create_app(settings, services)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            yield InProcess(server, services, blobs, client)
        await blobs.close()
        await services.close()
    finally:
        server.stop()


async def store_archive(client: httpx.AsyncClient, studies: int, per_study: int, series_per_study: int = 1) -> list[str]:
    """Store ``studies`` studies of ``per_study`` instances each; their Study Instance UIDs."""
    uids = [f"1.2.840.99.{n}" for n in range(1, studies + 1)]
    series = [f"{uid}.{n % series_per_study}" for uid in uids for n in range(per_study)]
    await store(client, [new_instance(study=uid.rpartition(".")[0], series=uid) for uid in series])
    return uids


async def gathered(coroutines: list[Awaitable[object]]) -> float:
    """Seconds to run ``coroutines`` together."""
    started = time.perf_counter()
    await asyncio.gather(*coroutines)
    return time.perf_counter() - started
