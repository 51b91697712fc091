"""STOW-RS: store the corpus, one multipart request per series, from one client.

The request body is streamed from the files with a known Content-Length (no chunked
encoding) by the upload CLI's own body builder (``dicom_core.client.stow.MultipartBody``),
so the client neither builds 50 MB bodies in memory nor becomes the bottleneck, and both
servers receive requests built the same way.
"""

from __future__ import annotations

import collections
import time
from contextlib import suppress
from functools import partial
from pathlib import Path

import httpx
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient
from tqdm import tqdm

from bench.ceiling import RawStorage, bounded, measure
from bench.client import client
from bench.corpus import Corpus, Series
from bench.process import BenchmarkError
from bench.scenarios import Result, ceiling, latency, scenario, throughput
from dicom_core.client.files import Instance
from dicom_core.client.stow import MultipartBody

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
CEILING_CONTAINER = "bench-ceiling-uploads"  # beside our file system, removed afterwards


def multipart_body(paths: list[Path]) -> MultipartBody:
    """The streamed ``multipart/related`` body of ``paths``, built as the upload CLI builds its requests."""
    instances = [Instance(str(path), path.stat().st_size, partial(path.open, "rb"), "") for path in paths]
    return MultipartBody(instances, on_bytes=lambda _: None)


def store_series(http: httpx.Client, base_url: str, corpus: Corpus, series: Series) -> None:
    """Store one series with one STOW-RS request; raise BenchmarkError unless every instance is stored."""
    body = multipart_body([corpus.path(instance) for instance in series.instances])
    response = http.post(
        f"{base_url}/studies",
        content=body,
        headers={"Content-Type": body.content_type, "Content-Length": str(body.length), "Accept": "application/dicom+json"},
    )
    if response.status_code != 200:
        raise BenchmarkError(
            f"STOW of series {series.series_instance_uid} gave HTTP {response.status_code}: {response.text[:500]}"
        )
    answer = response.json()
    stored = len(answer.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", []))
    failed = len(answer.get(FAILED_SOP_SEQUENCE, {}).get("Value", []))
    if stored != len(series.instances) or failed:
        raise BenchmarkError(
            f"STOW of series {series.series_instance_uid}: {stored} of {len(series.instances)} instances "
            f"acknowledged, {failed} failed"
        )


@scenario("stow", cpu=True)
def stow(base_url: str, corpus: Corpus) -> list[Result]:
    """STOW-RS of the whole corpus, one request per series, one client; instances/s and request latency."""
    durations: list[tuple[int, float]] = []
    with (
        client() as http,
        tqdm(total=corpus.instance_count, unit="inst", desc="STOW", leave=False) as progress,
    ):
        started = time.perf_counter()
        for _, series in corpus.series():
            before = time.perf_counter()
            store_series(http, base_url, corpus, series)
            durations.append((len(series.instances), time.perf_counter() - before))
            progress.update(len(series.instances))
        elapsed = time.perf_counter() - started
    typical = collections.Counter(size for size, _ in durations).most_common(1)[0][0]
    return [
        throughput(
            "STOW-RS, one series per request",
            corpus.instance_count,
            elapsed,
            requests=len(durations),
            megabytes_per_second=round(corpus.size / elapsed / 1e6, 2),
        ),
        latency(
            f"STOW-RS request of {typical} instances",
            [seconds for size, seconds in durations if size == typical],
        ),
    ]


async def upload(scratch: ContainerClient, name: str, path: Path) -> None:
    """One Put Blob of the file at ``path``, read only when its turn comes (a corpus can be larger than memory).

    Unconditional, so that the SDK's retry of an upload whose answer timed out (Azurite holding
    100,000 files in memory pauses) does not fail on the blob its first attempt wrote.
    """
    await scratch.upload_blob(name, path.read_bytes(), overwrite=True)


@ceiling("stow")
def stow_raw(storage: str, corpus: Corpus) -> list[Result]:
    """Uploads of the corpus files as blobs (one Put Blob each), CONCURRENCY at a time, into a scratch container."""
    files = [corpus.path(instance) for _, series in corpus.series() for instance in series.instances]

    async def run(raw: RawStorage) -> Result:
        scratch = raw.blobs.get_container_client(CEILING_CONTAINER)
        await scratch.create_container()
        try:
            started = time.perf_counter()
            await bounded(upload(scratch, f"{number}.dcm", path) for number, path in enumerate(files))
            elapsed = time.perf_counter() - started
        finally:
            with suppress(ResourceNotFoundError):
                await scratch.delete_container()
        return throughput(
            "STOW-RS, one series per request", len(files), elapsed, megabytes_per_second=round(corpus.size / elapsed / 1e6, 2)
        )

    return [measure(storage, run)]
