"""WADO-RS: instances, series, studies, series metadata and single frames, with their raw-storage ceilings.

Every answer is checked (status 200 and the expected number of parts or metadata
objects), so a faster wrong answer cannot win. The instance and frame scenarios
sample instances spread over the whole corpus; series metadata reads the big series
(``--big-series N``), or the first series when there is none.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.ceiling import RawStorage, measure
from bench.client import client
from bench.corpus import Corpus, Instance, Series, Study
from bench.process import BenchmarkError
from bench.scenarios import Result, ceiling, latency, scenario, throughput
from dicom_core.operations.retrieve.reading import nearly_whole_file

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME = 'multipart/related; type="application/octet-stream"'
FRAME_JP2 = 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90'
SAMPLES = 100
METADATA_SAMPLES = 20


def _instances(corpus: Corpus, count: int, *, between: bool = False) -> list[tuple[Study, Series, Instance]]:
    """``count`` instances spread evenly over the corpus; with ``between``, those halfway between them."""
    everything = [(study, series, instance) for study, series in corpus.series() for instance in series.instances]
    step = max(len(everything) // count, 1)
    return everything[step // 2 if between else 0 :: step][:count]


def _series_url(base_url: str, study: Study, series: Series) -> str:
    return f"{base_url}/studies/{study.study_instance_uid}/series/{series.series_instance_uid}"


def _parts(response: httpx.Response, expected: int, what: str) -> None:
    """Raise BenchmarkError unless ``response`` is a 200 multipart answer of ``expected`` parts."""
    if response.status_code != 200:
        raise BenchmarkError(f"{what} gave HTTP {response.status_code}: {response.text[:300]}")
    boundary = response.headers.get("content-type", "").split("boundary=")[-1].strip('"').split(";")[0]
    found = response.content.count(f"--{boundary}\r\n".encode())
    if found != expected:
        raise BenchmarkError(f"{what} answered {found} parts, expected {expected}")


@scenario("wado-instance")
def wado_instance(base_url: str, corpus: Corpus) -> list[Result]:
    """WADO-RS of one instance as stored (transfer-syntax=*), 100 instances across the corpus, twice; latency."""
    return _one_part_latency(base_url, corpus, "", AS_STORED, "WADO-RS one instance")


@scenario("wado-frame")
def wado_frame(base_url: str, corpus: Corpus) -> list[Result]:
    """WADO-RS of frame 1 (application/octet-stream), 100 other instances across the corpus, twice; latency."""
    return _one_part_latency(base_url, corpus, "/frames/1", FRAME, "WADO-RS one frame", between=True)


@scenario("wado-series")
def wado_series(base_url: str, corpus: Corpus) -> list[Result]:
    """WADO-RS of every series of the corpus (not the big one) as stored; instances/s and latency per series."""
    durations, count = [], 0
    with client() as http:
        started = time.perf_counter()
        for study in corpus.studies:
            for series in study.series:
                before = time.perf_counter()
                response = http.get(_series_url(base_url, study, series), headers={"Accept": AS_STORED})
                durations.append(time.perf_counter() - before)
                _parts(response, len(series.instances), f"series {series.series_instance_uid}")
                count += len(series.instances)
        elapsed = time.perf_counter() - started
    return [throughput("WADO-RS series, instances/s", count, elapsed), latency("WADO-RS one series", durations)]


@scenario("wado-study")
def wado_study(base_url: str, corpus: Corpus) -> list[Result]:
    """WADO-RS of every study of the corpus (not the big-series one) as stored; instances/s."""
    count = 0
    with client() as http:
        started = time.perf_counter()
        for study in corpus.studies:
            response = http.get(f"{base_url}/studies/{study.study_instance_uid}", headers={"Accept": AS_STORED})
            expected = sum(len(series.instances) for series in study.series)
            _parts(response, expected, f"study {study.study_instance_uid}")
            count += expected
        elapsed = time.perf_counter() - started
    return [throughput("WADO-RS study, instances/s", count, elapsed)]


@scenario("series-metadata")
def series_metadata(base_url: str, corpus: Corpus) -> list[Result]:
    """Series metadata (application/dicom+json) of the big series, 20 times; latency."""
    study = corpus.big_series_study or corpus.studies[0]
    series = study.series[0]
    url = f"{_series_url(base_url, study, series)}/metadata"
    durations = []
    with client() as http:
        for _ in range(METADATA_SAMPLES):
            started = time.perf_counter()
            response = http.get(url, headers={"Accept": "application/dicom+json"})
            durations.append(time.perf_counter() - started)
            if response.status_code != 200 or len(response.json()) != len(series.instances):
                raise BenchmarkError(f"series metadata gave HTTP {response.status_code}, not {len(series.instances)} objects")
    return [latency(f"series metadata, {len(series.instances)} instances", durations)]


@scenario("wado-frame-jp2", optional=True)
def wado_frame_jp2(base_url: str, corpus: Corpus) -> list[Result]:
    """WADO-RS of frame 1 transcoded to JPEG 2000 Lossless (image/jp2), 100 instances, twice; latency."""
    return _one_part_latency(base_url, corpus, "/frames/1", FRAME_JP2, "WADO-RS one frame as JPEG 2000")


def _one_part_latency(
    base_url: str, corpus: Corpus, suffix: str, accept: str, name: str, *, between: bool = False
) -> list[Result]:
    """The latency of a one-part answer for ``{instance URL}{suffix}``, over SAMPLES instances (``_instances``), twice.

    The first pass asks for each instance for the first time; the second asks again, when
    a server may know where the instance is (as when a viewer comes back to an image).
    """
    urls = [
        _series_url(base_url, study, series) + f"/instances/{instance.sop_instance_uid}{suffix}"
        for study, series, instance in _instances(corpus, SAMPLES, between=between)
    ]
    passes: list[list[float]] = []
    with client() as http:
        for _ in (name, again(name)):
            durations = []
            for url in urls:
                started = time.perf_counter()
                response = http.get(url, headers={"Accept": accept})
                durations.append(time.perf_counter() - started)
                _parts(response, 1, f"{url} ")
            passes.append(durations)
    return [latency(name, passes[0]), latency(again(name), passes[1])]


def again(name: str) -> str:
    """The name of the second pass over the same instances."""
    return f"{name}, again"


@ceiling("wado-instance")
def wado_instance_raw(storage: str, corpus: Corpus) -> list[Result]:
    """One GET of each sampled instance's blob, twice; and the point read of its index entity, which grows
    with the table on Azurite (docs/benchmark.md), so that its share of a request can be told apart."""

    async def gets(raw: RawStorage) -> list[float]:
        durations = []
        for study, series, instance in _instances(corpus, SAMPLES):
            path = raw.path(study, series, instance)
            started = time.perf_counter()
            data = await raw.get(path)
            durations.append(time.perf_counter() - started)
            if len(data) != instance.size:
                raise BenchmarkError(f"{path}: {len(data)} bytes, expected {instance.size}")
        return durations

    async def point_reads(raw: RawStorage) -> list[float]:
        durations = []
        for study, series, instance in _instances(corpus, SAMPLES):
            started = time.perf_counter()
            await raw.record(study, series, instance)
            durations.append(time.perf_counter() - started)
        return durations

    name = "WADO-RS one instance"
    return [
        latency(name, measure(storage, gets)),
        latency(again(name), measure(storage, gets)),
        latency("index point read of an instance (Index.get_instance)", measure(storage, point_reads)),
    ]


@ceiling("wado-frame")
def wado_frame_raw(storage: str, corpus: Corpus) -> list[Result]:
    """One GET of frame 1's bytes of each sampled instance (offsets from its index record), twice.

    A ranged GET, or a GET of the whole file when the frame is nearly all of it (``nearly_whole_file``), as
    the server reads it: that is the cheaper of the two on Azurite (docs/retrieve.md, Frames).
    """

    async def run(raw: RawStorage) -> list[float]:
        durations = []
        for study, series, instance in _instances(corpus, SAMPLES, between=True):
            path, record = raw.path(study, series, instance), await raw.record(study, series, instance)
            if not record.frame_ranges:
                raise BenchmarkError(f"{path}: the index has no frame ranges")
            ranges = record.frame_ranges[0]
            whole = nearly_whole_file(record, ranges)
            started = time.perf_counter()
            await asyncio.gather(*([raw.get(path)] if whole else (raw.get(path, offset, length) for offset, length in ranges)))
            durations.append(time.perf_counter() - started)
        return durations

    name = "WADO-RS one frame"
    return [latency(name, measure(storage, run)), latency(again(name), measure(storage, run))]


@ceiling("wado-series")
def wado_series_raw(storage: str, corpus: Corpus) -> list[Result]:
    """GETs of each series' blobs, CONCURRENCY at a time."""

    async def run(raw: RawStorage) -> list[Result]:
        durations, count = [], 0
        started = time.perf_counter()
        for study in corpus.studies:
            for series in study.series:
                before = time.perf_counter()
                await raw.get_all(raw.path(study, series, instance) for instance in series.instances)
                durations.append(time.perf_counter() - before)
                count += len(series.instances)
        elapsed = time.perf_counter() - started
        return [throughput("WADO-RS series, instances/s", count, elapsed), latency("WADO-RS one series", durations)]

    return measure(storage, run)


@ceiling("wado-study")
def wado_study_raw(storage: str, corpus: Corpus) -> list[Result]:
    """GETs of each study's blobs, CONCURRENCY at a time."""

    async def run(raw: RawStorage) -> list[Result]:
        count = 0
        started = time.perf_counter()
        for study in corpus.studies:
            paths = [raw.path(study, series, instance) for series in study.series for instance in series.instances]
            await raw.get_all(paths)
            count += len(paths)
        return [throughput("WADO-RS study, instances/s", count, time.perf_counter() - started)]

    return measure(storage, run)
