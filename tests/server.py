"""Run the local server the way the README does (``python -m dicom_core serve``) for end-to-end tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from dicom_core.local.azurite import REPOSITORY_ROOT, free_port
from dicom_core.settings import Settings
from tests.environments import server_environment


def start_server(
    environment: dict[str, str], log: Path, arguments: tuple[str, ...] = (), module: str = "dicom_core"
) -> tuple[str, subprocess.Popen]:
    """``python -m {module} serve`` on a free port, its output in ``log``; its /v2 URL and process once it answers."""
    port = free_port()
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "serve", "--port", str(port), *arguments],
            cwd=REPOSITORY_ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v2"
    try:
        wait_until_answering(url, process, log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return url, process


@contextmanager
def running_server(
    settings: Settings,
    log: Path,
    extra_env: dict[str, str] | None = None,
    module: str = "dicom_core",
    log_level: str = "warning",
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the server over ``settings``; yield its /v2 URL and process; stop it after."""
    environment = server_environment(settings) | (extra_env or {})
    url, process = start_server(environment, log, ("--log-level", log_level), module)
    try:
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


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    """Return once ``condition()`` holds; TimeoutError naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {seconds} s")
        time.sleep(0.1)


def audit_events(log: Path) -> list[dict]:
    """The audit events (http/audit.py) a server wrote to its output in ``log``."""
    return [json.loads(line.split("AUDIT ", 1)[1]) for line in log.read_text().splitlines() if "AUDIT " in line]


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


def docs_example(doc: str, marker: str) -> str:
    """The Python block after ``<!-- {marker} -->`` in ``docs/{doc}``: examples the tests run as written."""
    text = (REPOSITORY_ROOT / "docs" / doc).read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"docs/{doc} has no {marker}"
    return match.group(1)


def run_script(script: Path, url: str) -> subprocess.CompletedProcess:
    """Run a docs example with the repository's Python against the server at ``url``; fail with its output."""
    result = subprocess.run(
        [sys.executable, str(script)],
        env={"DICOMWEB_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result
