"""Run the local server the way the README does (``python -m dicom_core serve``) for end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from dicom_core.local.azurite import REPOSITORY_ROOT, free_port
from dicom_core.settings import Settings
from tests.conftest import server_environment


@contextmanager
def running_server(
    settings: Settings, log: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the server on a free port; yield its /v2 URL and process; stop it after."""
    port = free_port()
    environment = server_environment(settings) | (extra_env or {})
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_core", "serve", "--port", str(port), "--log-level", "warning"],
            cwd=REPOSITORY_ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v2"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}: see {log}")
            try:
                httpx.get(f"{url}/studies/1.2/unknown", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server did not answer within 30 s: see {log}") from None
                time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size of a process so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


def current_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")
