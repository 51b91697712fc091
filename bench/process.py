"""Helpers shared by the server launchers: free ports, waiting for HTTP, stopping processes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx


class BenchmarkError(RuntimeError):
    """A server or a scenario did not behave as the benchmark needs; the message says why."""


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_answers(
    url: str,
    process: subprocess.Popen,
    log: Path,
    *,
    timeout: float = 60.0,
    ready: Callable[[httpx.Response], bool] = lambda response: True,
) -> httpx.Response:
    """Poll ``url`` until it gives an HTTP answer that ``ready`` accepts.

    Raises BenchmarkError, with the end of the server's log, when the process exits
    or the deadline passes first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise BenchmarkError(f"the server exited with code {process.returncode} while starting:\n{log_tail(log)}")
        try:
            response = httpx.get(url, timeout=2.0)
            if ready(response):
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop(process)
            raise BenchmarkError(f"{url} did not answer within {timeout:.0f} s:\n{log_tail(log)}")
        time.sleep(0.1)


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Ask a process to exit (SIGTERM), and kill it if it has not within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class Server:
    """A running DICOMweb server as the scenarios see it."""

    name: str
    base_url: str
    """The DICOMweb root, without a trailing slash: ``{base_url}/studies`` is STOW and QIDO."""
    version: str
    data: Path
    """The folder that holds everything the server stored."""
    lake_connection: str | None = None
    """Ours: the connection string of its lake and index (bench/analytics.py reads the tables, and the
    raw-storage ceiling, bench/ceiling.py, the same files)."""
    processes: tuple[int, ...] = ()
    """The processes doing the server's work, its storage included (ours: the server and Azurite), whose
    CPU time, with their children's, the scenarios registered with ``cpu=True`` report."""


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """CPU time (user and system) used so far by ``pids`` and every process under them; 0 where /proc is missing."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while being read
        pid = int(entry.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks
    total, pending = 0.0, list(pids)
    while pending:
        pid = pending.pop()
        total += used.get(pid, 0.0)
        pending += children.get(pid, [])
    return total
