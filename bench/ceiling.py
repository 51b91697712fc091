"""The raw-storage ceiling: the Azure SDK alone on the storage our server runs on, no service in between.

Each scenario's ceiling (``@ceiling`` in bench/scenarios.py) does the storage operations
that its requests cannot do without, on the very files our server stored: one GET of an
instance's blob, one ranged GET of a frame's bytes, parallel GETs of a series' or a
study's blobs, parallel uploads of the corpus. No lake-backed service can beat these on
the same machine, so they separate what our code costs from what the storage costs.

Paths come from the lake layout and frame offsets from the index record, read through
our adapters before the clock starts; only the SDK calls are timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from azure.storage.blob import __version__ as BLOB_SDK_VERSION
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from bench import ours
from bench.corpus import Instance, Series, Study
from bench.process import BenchmarkError
from dicom_core.operations.retrieve.streams import RETRIEVE_CONCURRENCY
from dicom_core.services import Services
from dicom_core.settings import DEFAULT_PARTITION
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import InstanceRecord

CONCURRENCY = RETRIEVE_CONCURRENCY
"""Reads (and uploads) in flight at once: as many as our retrieve keeps in flight for one response."""
VERSION = f"azure-storage-blob {BLOB_SDK_VERSION}, on the same Azurite"

T = TypeVar("T")


@dataclass(frozen=True)
class RawStorage:
    """The blob service and container of our lake, and our adapters for paths and records (used before timing)."""

    blobs: BlobServiceClient
    container: ContainerClient
    services: Services

    def key(self, study: Study, series: Series, instance: Instance) -> InstanceKey:
        return InstanceKey(DEFAULT_PARTITION, study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid)

    def path(self, study: Study, series: Series, instance: Instance) -> str:
        return self.services.layout.instance_path(self.key(study, series, instance))

    async def record(self, study: Study, series: Series, instance: Instance) -> InstanceRecord:
        record = await self.services.index.get_instance(self.key(study, series, instance))
        if record is None:
            raise BenchmarkError(f"instance {instance.sop_instance_uid} is not in our index")
        return record

    async def get(self, path: str, offset: int | None = None, length: int | None = None) -> bytes:
        """One GET of a blob, or of ``length`` bytes from ``offset``."""
        return await (await self.container.download_blob(path, offset=offset, length=length)).readall()

    async def get_all(self, paths: Iterable[str]) -> int:
        """GET every blob, CONCURRENCY at a time; the total of their sizes."""
        return sum(len(data) for data in await bounded(self.get(path) for path in paths))


async def bounded(work: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``work``, at most CONCURRENCY at a time, in order."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(item: Awaitable[T]) -> T:
        async with slots:
            return await item

    return await asyncio.gather(*(one(item) for item in work))


@asynccontextmanager
async def _opened(connection_string: str) -> AsyncIterator[RawStorage]:
    settings = ours.settings(connection_string)
    services = await Services.open(settings)
    try:
        async with BlobServiceClient.from_connection_string(connection_string) as blobs:
            yield RawStorage(blobs, blobs.get_container_client(settings.file_system), services)
    finally:
        await services.close()


def measure(connection_string: str, work: Callable[[RawStorage], Awaitable[T]]) -> T:
    """Run ``work`` against the raw storage at ``connection_string``."""

    async def run() -> T:
        async with _opened(connection_string) as storage:
            return await work(storage)

    return asyncio.run(run())
