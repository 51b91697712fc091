"""QIDO-RS: search latency by PatientID, PatientName wildcard, StudyDate range, Modality, and a series' instances.

Each search is chosen so that its answer has the same size at 1,000 and at 20,000 instances
(the corpus gives every patient two studies and unique dates and names to the first patients),
except ``Modality`` at series level, whose answer is a quarter of the series (it is capped by
``limit=1000`` on both servers). The same query string goes to both servers; the number of
matches each returned is kept in the results, so a wrong answer does not pass for a fast one.
"""

from __future__ import annotations

import datetime
import time
import urllib.parse

import httpx

from bench.client import client
from bench.corpus import Corpus
from bench.process import BenchmarkError
from bench.scenarios import Result, latency, scenario

SAMPLES = 30
HEADERS = {"Accept": "application/dicom+json"}
# Orthanc reads a percent-encoded "*" or "^" literally, so both servers get them unencoded.
_UNENCODED = "*^-,"


def measure(http: httpx.Client, name: str, url: str, params: dict[str, str]) -> Result:
    """Median and p95 of ``SAMPLES`` searches after one unmeasured one; fails on a non-200 or an empty answer."""
    durations, matches = [], 0
    if params:
        url += "?" + "&".join(f"{key}={urllib.parse.quote(value, safe=_UNENCODED)}" for key, value in params.items())
    for sample in range(SAMPLES + 1):
        started = time.perf_counter()
        response = http.get(url, headers=HEADERS)
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or not response.content or not response.json():
            raise BenchmarkError(f"{name}: {url} gave HTTP {response.status_code} {response.text[:300]}")
        matches = len(response.json())
        if sample:
            durations.append(elapsed)
    return latency(name, durations, matches=matches)


def _date_range(study_date: str, days: int = 3) -> str:
    start = datetime.datetime.strptime(study_date, "%Y%m%d").date()
    return f"{study_date}-{(start + datetime.timedelta(days=days)).strftime('%Y%m%d')}"


@scenario("qido")
def qido(base_url: str, corpus: Corpus) -> list[Result]:
    """QIDO-RS latency: PatientID, PatientName wildcard, StudyDate range, Modality (series), instances of a series."""
    dupont = next(study for study in corpus.studies if study.patient_name.startswith("Dupont^Jean"))
    first, (series, *_) = corpus.studies[0], corpus.studies[0].series
    with client() as http:
        return [
            measure(http, "QIDO studies by PatientID", f"{base_url}/studies", {"PatientID": first.patient_id}),
            measure(http, "QIDO studies by PatientName=Dupont^Jean*", f"{base_url}/studies", {"PatientName": "Dupont^Jean*"}),
            measure(
                http, "QIDO studies by StudyDate range", f"{base_url}/studies", {"StudyDate": _date_range(dupont.study_date)}
            ),
            measure(http, "QIDO series by Modality=PT", f"{base_url}/series", {"Modality": "PT", "limit": "1000"}),
            measure(
                http,
                f"QIDO instances of a series ({len(series.instances)})",
                f"{base_url}/studies/{first.study_instance_uid}/series/{series.series_instance_uid}/instances",
                {},
            ),
        ]
