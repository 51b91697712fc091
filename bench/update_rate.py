"""Bulk update rate against the raw storage operations it needs, on a local Azurite (docs/bulk-update.md).

``python -m bench.update_rate [studies] [instances per study]`` stores an archive through the app
(in process), changes PatientID and PatientName of every study with POST /v2/studies/$bulkUpdate
(the operations worker run directly, so no polling interval is counted), then performs on the same
lake files, with the raw SDK and 8 at a time as the update does, the least any kept-original
rewrite needs: Copy Blob to keep the original, then Put Block (a header), Put Block From URL (the
rest) and Put Block List. Both rates are instances per second; the ratio is the update's share of
what the storage allows.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

from azure.storage.blob import BlobBlock
from azure.storage.blob.aio import BlobServiceClient

from bench.in_process import archive_size, gathered, in_process_service, store_archive
from dicom_core.events import run_operations
from dicom_core.services import Services

_IN_FLIGHT = 8
_HEADER = 4096  # about a CT header
CHANGE = {"00100020": {"vr": "LO", "Value": ["MRN-0042"]}, "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}}


async def _raw_rewrites(services: Services, blobs: BlobServiceClient) -> tuple[int, float]:
    """Per lake file: Copy Blob to a copy, then a header block, the rest staged from URL, the block list committed."""
    sizes = {file.path: file.size async for file in services.lake.list(services.layout.partition_folder("Microsoft.Default"))}
    paths = list(sizes)
    sources = await services.lake.readable_urls(paths, timedelta(hours=1))
    container = blobs.get_container_client(services.lake.file_system)
    slots = asyncio.Semaphore(_IN_FLIGHT)
    ids = [base64.b64encode(f"{n:08d}".encode()).decode() for n in range(2)]

    async def rewrite(path: str, source: str) -> None:
        async with slots:
            blob = container.get_blob_client(path)
            await container.get_blob_client(f"rawcopies/{path}").start_copy_from_url(source)
            await blob.stage_block(ids[0], b"\0" * _HEADER)
            await blob.stage_block_from_url(ids[1], source, source_offset=_HEADER, source_length=sizes[path] - _HEADER)
            await blob.commit_block_list([BlobBlock(ids[0]), BlobBlock(ids[1])])

    return len(paths), await gathered([rewrite(path, source) for path, source in zip(paths, sources, strict=True)])


async def main(studies: int, per_study: int) -> None:
    async with in_process_service("update") as bench:
        services, client = bench.services, bench.client
        uids = await store_archive(client, studies, per_study)
        for start in range(0, studies, 50):  # at most 50 studies per update, as Azure's
            body = {"studyInstanceUids": uids[start : start + 50], "changeDataset": CHANGE}
            assert (await client.post("/v2/studies/$bulkUpdate", json=body)).status_code == 202
        services.statistics.reset()
        seconds = await gathered([run_operations(services, owner="bench")])
        costs = services.statistics
        found = (await client.get("/v2/studies", params={"PatientID": "MRN-0042", "limit": 1000})).json()
        assert len(found) == studies, f"{len(found)} of {studies} studies updated"
        updated = studies * per_study
        files, raw_seconds = await _raw_rewrites(services, bench.blobs)
        print(f"bulk update: {updated} instances ({studies} studies) in {seconds:.2f} s = {updated / seconds:.0f} instances/s")
        print(
            f"  per instance: {costs.lake_requests / updated:.2f} lake requests, {costs.requests / updated:.2f} index "
            f"requests, {costs.lake_bytes_read / updated / 1024:.1f} KiB read"
        )
        print(f"raw copy + splice: {files} files in {raw_seconds:.2f} s = {files / raw_seconds:.0f} files/s")
        print(f"update / raw: {updated / seconds / (files / raw_seconds):.2f}")


if __name__ == "__main__":
    asyncio.run(main(*archive_size(__doc__, 20, 50)))
