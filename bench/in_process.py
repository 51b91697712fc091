"""The service in this process over a fresh Azurite, for the operation-rate benchmarks (export, bulk update).

``in_process_service`` starts Azurite, opens the storage and yields an HTTP client of the app (no
network, no server process), so an operation's rate is measured with its worker run directly and no
polling interval counted. ``store_archive`` fills it with ``studies`` of ``per_study`` CT instances,
stored as the STOW-RS scenario stores (bench/stow.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
from azure.storage.blob.aio import BlobServiceClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from bench.process import BenchmarkError
from bench.stow import multipart_body
from dicom_core.http.app import create_app
from dicom_core.local import azurite
from dicom_core.services import Services
from dicom_core.settings import Connection, Settings

_PER_REQUEST = 50


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
    """Store ``studies`` studies of ``per_study`` instances each, in ``series_per_study`` series; their Study Instance UIDs."""
    uids = [f"1.2.840.99.{n}" for n in range(1, studies + 1)]
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as folder:
        paths = []
        for study in uids:
            for number in range(per_study):
                dataset.StudyInstanceUID = study
                dataset.SeriesInstanceUID = f"{study}.{number % series_per_study}"
                dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                paths.append(Path(folder, f"{len(paths)}.dcm"))
                dataset.save_as(paths[-1], enforce_file_format=True)
        for start in range(0, len(paths), _PER_REQUEST):
            body = multipart_body(paths[start : start + _PER_REQUEST])
            response = await client.post("/v2/studies", content=b"".join(body), headers={"Content-Type": body.content_type})
            if response.status_code != 200:
                raise BenchmarkError(f"storing the archive gave HTTP {response.status_code}: {response.text[:500]}")
    return uids


def archive_size(module_doc: str, studies: int, per_study: int) -> tuple[int, int]:
    """The archive's studies and instances per study from the command line, with these defaults."""
    parser = argparse.ArgumentParser(description=module_doc.split("\n\n")[0])
    parser.add_argument("studies", type=int, nargs="?", default=studies, help=f"studies to store (default {studies})")
    parser.add_argument("per_study", type=int, nargs="?", default=per_study, help=f"instances per study (default {per_study})")
    arguments = parser.parse_args()
    if arguments.studies < 1 or arguments.per_study < 1:
        parser.error("studies and instances per study must be at least 1")
    return arguments.studies, arguments.per_study


async def gathered(coroutines: list[Awaitable[object]]) -> float:
    """Seconds to run ``coroutines`` together."""
    started = time.perf_counter()
    await asyncio.gather(*coroutines)
    return time.perf_counter() - started
