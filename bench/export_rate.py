"""Export rate against a plain server-side copy of the same blobs, on a local Azurite (docs/export.md).

``python -m bench.export_rate [studies] [instances per study]`` stores an archive through the app
(in process), exports every study with POST /v2/export to a second container (the operations
worker run directly, so no polling interval is counted), then copies the same lake blobs with
Copy Blob, 16 at a time as the export does, to a third container. Both rates are files per second.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from bench.in_process import archive_size, gathered, in_process_service, store_archive
from dicom_core.events import run_operations
from dicom_core.local import azurite
from dicom_core.services import Services

_IN_FLIGHT = 16


def _sas_url(server: azurite.Azurite, name: str) -> str:
    permission = ContainerSasPermissions(read=True, write=True, create=True, add=True, list=True)
    expiry = datetime.now(UTC) + timedelta(hours=2)
    key = azurite.ACCOUNT_KEY
    sas = generate_container_sas(azurite.ACCOUNT_NAME, name, account_key=key, permission=permission, expiry=expiry)
    return f"http://127.0.0.1:{server.blob_port}/{azurite.ACCOUNT_NAME}/{name}?{sas}"


async def _plain_copy(services: Services, blobs: BlobServiceClient, target: str) -> tuple[int, float]:
    """Copy Blob of every lake file to ``target``, 16 at a time: the floor an export cannot beat."""
    paths = [file.path async for file in services.lake.list(services.layout.root)]
    sources = await services.lake.readable_urls(paths, timedelta(hours=1))
    container = blobs.get_container_client(target)
    slots = asyncio.Semaphore(_IN_FLIGHT)

    async def copy(path: str, source: str) -> None:
        async with slots:
            await container.get_blob_client(path).start_copy_from_url(source)

    return len(paths), await gathered([copy(path, source) for path, source in zip(paths, sources, strict=True)])


async def main(studies: int, per_study: int) -> None:
    async with in_process_service("export") as bench:
        services, blobs, client = bench.services, bench.blobs, bench.client
        for name in ("exported", "copied"):
            await blobs.get_container_client(name).create_container()
        uids = await store_archive(client, studies, per_study, series_per_study=per_study)
        body = {
            "source": {"type": "identifiers", "settings": {"values": uids}},
            "destination": {"type": "azureblob", "settings": {"blobContainerUri": _sas_url(bench.server, "exported")}},
        }
        response = await client.post("/v2/export", json=body)
        operation_url = response.json()["href"].removeprefix("http://bench")
        seconds = await gathered([run_operations(services, owner="bench")])
        results = (await client.get(operation_url)).json()["results"]
        files, copy_seconds = await _plain_copy(services, blobs, "copied")
        exported = results["exported"]
        print(f"export: {exported} files ({studies} studies) in {seconds:.2f} s = {exported / seconds:.0f} files/s")
        print(f"plain Copy Blob: {files} files in {copy_seconds:.2f} s = {files / copy_seconds:.0f} files/s")
        print(f"export / plain copy: {exported / seconds / (files / copy_seconds):.2f}")


if __name__ == "__main__":
    asyncio.run(main(*archive_size(__doc__, 300, 2)))
