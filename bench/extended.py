"""Extended query tags: the reindex rate of an archive stored before the tag, then a search by it.

Only our server has extended query tags (the Azure DICOM v2 API); Orthanc answers the POST
with an error and the scenario measures nothing there. FrameOfReferenceUID is a series-level
tag that the corpus gives each series its own value, so the search's answer is one series at
every archive size. The reindex rate is instances over the time from the POST to the
operation's completion, polled every 0.2 s (it includes the worker's pickup, at most
``DICOM_OPERATION_POLL_SECONDS``).
"""

from __future__ import annotations

import time

import pydicom

from bench.client import client
from bench.corpus import Corpus
from bench.process import BenchmarkError
from bench.scenarios import Result, scenario, throughput
from bench.search import measure

_POLL_SECONDS = 0.2
_REINDEX_TIMEOUT = 3600


@scenario("extended")
def extended(base_url: str, corpus: Corpus) -> list[Result]:
    """Reindex rate of a new extended query tag (FrameOfReferenceUID), then QIDO series by it."""
    first = corpus.studies[0].series[0]
    frame_of_reference = str(pydicom.dcmread(corpus.root / first.instances[0].path, stop_before_pixels=True).FrameOfReferenceUID)
    instances = sum(len(series.instances) for study in corpus.studies for series in study.series)
    with client() as http:
        started = time.perf_counter()
        added = http.post(f"{base_url}/extendedquerytags", json=[{"path": "FrameOfReferenceUID", "level": "Series"}])
        if added.status_code != 202:
            return []  # a server without extended query tags
        while (operation := http.get(added.json()["href"]).json())["status"] in ("notStarted", "running"):
            if time.perf_counter() - started > _REINDEX_TIMEOUT:
                raise BenchmarkError(f"the reindex did not complete in {_REINDEX_TIMEOUT} s: {operation}")
            time.sleep(_POLL_SECONDS)
        seconds = time.perf_counter() - started
        if operation["status"] != "completed":
            raise BenchmarkError(f"the reindex failed: {operation}")
        search = {"FrameOfReferenceUID": frame_of_reference}
        return [
            throughput("Reindex of an extended query tag", instances, seconds),
            measure(http, "QIDO series by extended FrameOfReferenceUID", f"{base_url}/series", search),
        ]
