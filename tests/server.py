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
from tests.environments import server_environment


@contextmanager
def running_server(
    settings: Settings, log: Path, extra_env: dict[str, str] | None = None, module: str = "dicom_core"
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the server (``python -m {module} serve``) on a free port; yield its /v2 URL and process; stop it after."""
    port = free_port()
    environment = server_environment(settings) | (extra_env or {})
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "serve", "--port", str(port), "--log-level", "warning"],
            cwd=REPOSITORY_ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v2"
    try:
        wait_until_answering(url, process, log)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until_answering(url: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Return once the server at ``url`` answers HTTP; fail with its log when it exits or stays silent."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            httpx.get(f"{url}/studies/1.2/unknown", timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not answer within {seconds} s:\n{log.read_text()[-4000:]}") from None
            time.sleep(0.2)


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
