"""``python -m bench.analytics``: change-feed rows synced per second, and a cohort query over the Delta table
against the same question asked through QIDO-RS.

It stores the synthetic corpus (bench/corpus.py) into our service on a fresh Azurite,
then, with the server's own background sync off, runs one sync of the whole change
feed in this process and times it; then asks two questions both ways, each answer
checked to be the same set of instances:

- one patient's instances (QIDO ``/instances?PatientID=``; a table filter on patientId),
- every CT instance of the archive, as file paths to train on (QIDO ``/instances?Modality=CT``
  paged by 1,000; a table filter on modality).

QIDO returns DICOM JSON and the client still has to turn UIDs into lake paths; the
table returns ``filePath`` directly. Results go to bench/results/analytics-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
from tqdm import tqdm

from bench import ours
from bench.client import client
from bench.corpus import load_or_generate
from bench.stow import store_series
from dicom_core.operations.analytics import VACUUM_RETENTION_HOURS, open_tables, sync
from dicom_core.services import Services
from dicom_core.settings import Connection, Settings

SAMPLES = 5
_SOP = "00080018"
RESULTS = Path(__file__).resolve().parent / "results"


def _median_seconds(measure, samples: int = SAMPLES) -> tuple[float, object]:
    durations, answer = [], None
    for _ in range(samples):
        started = time.perf_counter()
        answer = measure()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations), answer


def _qido_sops(http: httpx.Client, url: str, params: dict[str, str]) -> set[str]:
    """Every instance a QIDO-RS search matches, following pages of 1,000."""
    sops: set[str] = set()
    offset = 0
    while True:
        response = http.get(url, params={**params, "limit": "1000", "offset": str(offset)})
        response.raise_for_status()
        page = response.json() if response.status_code == 200 and response.content else []
        sops.update(item[_SOP]["Value"][0] for item in page)
        if len(page) < 1000:
            return sops
        offset += 1000


async def _measure(server, batch_size: int) -> dict:
    connection = Connection(connection_string=server.lake_connection)
    settings = Settings(lake=connection, index=connection, table_prefix=ours.TABLE_PREFIX, analytics_batch_size=batch_size)
    services = await Services.open(settings)
    try:
        changes = await services.changefeed.last_sequence()
        with tqdm(total=changes, unit=" changes", desc="analytics sync", leave=False) as bar:
            started = time.perf_counter()
            result = await sync(services, progress=bar.update)
            elapsed = time.perf_counter() - started
        tables = await open_tables(services)
        statuses = await tables.status()
    finally:
        await services.close()
    compact = functools.partial(tables.maintain, max_files=1, retention_hours=VACUUM_RETENTION_HOURS)
    uri, options = tables.uri("instances"), tables.location.storage_options
    patient = pl.scan_delta(uri, storage_options=options).select("patientId").head(1).collect()["patientId"][0]

    # Lazy scans, as an analyst writes them: only the columns asked for are read, and file statistics
    # skip files that cannot match.
    def table_patient() -> set[str]:
        scan = pl.scan_delta(uri, storage_options=options).filter(pl.col("patientId") == patient)
        return set(scan.select("sopInstanceUid", "filePath").collect()["sopInstanceUid"])

    def table_ct() -> set[str]:
        scan = pl.scan_delta(uri, storage_options=options).filter(pl.col("modality") == "CT")
        return set(scan.select("sopInstanceUid", "filePath").collect()["sopInstanceUid"])

    with client() as http:
        url = f"{server.base_url}/instances"
        questions = {}
        for name, table_query, params in (
            ("one patient's instances", table_patient, {"PatientID": patient}),
            ("every CT instance", table_ct, {"Modality": "CT"}),
        ):
            table_seconds, table_answer = _median_seconds(table_query)
            qido_seconds, qido_answer = _median_seconds(lambda params=params: _qido_sops(http, url, params))
            if table_answer != qido_answer:
                raise RuntimeError(f"{name}: the table found {len(table_answer)} instances, QIDO {len(qido_answer)}")
            questions[name] = {
                "instances": len(table_answer),
                "table_ms": round(table_seconds * 1000, 1),
                "qido_ms": round(qido_seconds * 1000, 1),
            }
        # The same questions once maintenance has compacted the one-file-per-sync tables.
        await compact()
        for name, table_query in (("one patient's instances", table_patient), ("every CT instance", table_ct)):
            questions[name]["table_compacted_ms"] = round(_median_seconds(table_query)[0] * 1000, 1)
    return {
        "changes": result.entries,
        "sync_seconds": round(elapsed, 2),
        "changes_per_second": round(result.entries / elapsed, 1),
        "rows": result.rows,
        "batch_size": batch_size,
        "tables": {status.name: {"version": status.version, "files": status.files, "rows": status.rows} for status in statuses},
        "questions": questions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--instances", type=int, default=20_000, help="instances in the corpus, so changes synced (default 20000)"
    )
    parser.add_argument("--series-size", type=int, default=50, help="instances per series (default 50)")
    parser.add_argument("--batch-size", type=int, default=Settings.analytics_batch_size, help="feed entries per Delta commit")
    options = parser.parse_args(argv)
    corpus = load_or_generate(options.instances, options.series_size)
    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as data, ours.running(Path(data)) as server:
        with client() as http, tqdm(total=corpus.instance_count, unit=" inst", desc="STOW", leave=False) as bar:
            for _, series in corpus.series():
                store_series(http, server.base_url, corpus, series)
                bar.update(len(series.instances))
        figures = asyncio.run(_measure(server, options.batch_size))
    figures["version"] = ours.version()
    print(
        f"analytics sync: {figures['changes']} changes in {figures['sync_seconds']} s = {figures['changes_per_second']} changes/s"
    )
    for name, question in figures["questions"].items():
        print(
            f"  {name} ({question['instances']}): table {question['table_ms']} ms "
            f"(compacted {question['table_compacted_ms']} ms), QIDO {question['qido_ms']} ms"
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"analytics-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(figures, indent=2))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
