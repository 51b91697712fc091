"""Start our service the way a developer runs it: Azurite, then ``python -m dicom_core serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.process import BenchmarkError, Server, stop, wait_until_answers
from dicom_core.local import azurite
from dicom_core.settings import Settings

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
TABLE_PREFIX = "bench"
ANALYTICS_OFF_SECONDS = 10**9


def environment(connection_string: str) -> dict[str, str]:
    """The settings our server runs with over the storage at ``connection_string``."""
    return {
        "DicomLake": connection_string,
        "DICOM_TABLE_PREFIX": TABLE_PREFIX,
        # No analytics sync in the background: it would compete with the requests measured
        # for the two cores (bench/analytics.py measures the sync by itself).
        "DICOM_ANALYTICS_INTERVAL_SECONDS": str(ANALYTICS_OFF_SECONDS),
        "DICOM_OPERATION_POLL_SECONDS": "1",  # the extended scenario's reindex starts within a second
    }


def settings(connection_string: str) -> Settings:
    """The server's settings, for reading the same storage beside it (the raw-storage ceiling)."""
    return Settings.from_environment(environment(connection_string))


def version() -> str:
    """The commit of the working tree, for the results file (``unknown`` outside git)."""
    result = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return f"dicom_core {result.stdout.strip() or 'unknown'}"


@contextmanager
def running(data: Path, *, azurite_in_memory: bool = False) -> Iterator[Server]:
    """Run a fresh Azurite and our server over it; stop both on exit.

    Azurite keeps its data in files in ``data``, as the local default runs it, or with
    ``azurite_in_memory`` only in memory: then it never rewrites its whole database every
    5 seconds, which at tens of thousands of instances costs more than the requests
    (docs/benchmark.md, scale).
    """
    data.mkdir(parents=True, exist_ok=True)
    try:
        storage = azurite.start(data / "azurite", in_memory=azurite_in_memory, log_file=data / "azurite.log")
    except (FileNotFoundError, RuntimeError, TimeoutError) as error:
        raise BenchmarkError(f"Azurite did not start: {error}") from error
    try:
        port = azurite.free_port()
        log = data / "server.log"
        with open(log, "ab") as output:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicom_core",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=REPOSITORY_ROOT,
                env={**os.environ, **environment(storage.connection_string)},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            base_url = f"http://127.0.0.1:{port}/v2"
            wait_until_answers(f"{base_url}/health/check", process, log)
            yield Server("ours", base_url, version(), data, storage.connection_string, (process.pid, storage.process.pid))
        finally:
            stop(process)
    finally:
        storage.stop()
