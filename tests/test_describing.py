"""Instances parsed in worker processes (operations/describing.py): the same description as in a thread, errors included."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dicom_core.dicom.errors import InvalidInstance
from dicom_core.operations import describing
from dicom_core.operations.indexing import describe_instance, structure_limits
from dicom_core.settings import Limits
from tests.dicom_files import file_bytes, new_instance

POOLED = replace(Limits(), parse_processes=1)
ROOT = Path(__file__).resolve().parents[1]


async def pooled(data: bytes, limits: Limits = POOLED):
    return await describing.describe(io.BytesIO(data), len(data), limits)


def in_thread(data: bytes):
    return describe_instance(io.BytesIO(data), len(data), structure_limits(Limits()))


def worker_pids() -> set[int]:
    pool = describing._pools.get(POOLED.parse_processes)
    return set(pool._processes or ()) if pool is not None else set()


@pytest.mark.parametrize("name", ["CT_small.dcm", "emri_small.dcm", "SC_rgb_rle.dcm"])
async def test_a_worker_describes_an_instance_as_the_servers_process_does(name):
    data = file_bytes(name)
    described = await pooled(data)
    assert worker_pids(), "no worker process took the part"
    assert described == in_thread(data)


async def test_an_invalid_instance_is_refused_by_a_worker_with_the_same_message():
    data = bytearray(new_instance())
    data[128:132] = b"NOPE"
    with pytest.raises(InvalidInstance) as refused:
        await pooled(bytes(data))
    with pytest.raises(InvalidInstance) as in_process:
        in_thread(bytes(data))
    assert str(refused.value) == str(in_process.value) and "DICM" in str(refused.value)


async def test_a_killed_worker_costs_no_instance_and_the_process_parses_in_threads_from_then_on(monkeypatch):
    monkeypatch.setattr(describing, "_pools", {})  # a pool of this test's own, and the others' back afterwards
    monkeypatch.setattr(describing, "_broken", threading.Event())
    data = new_instance()
    await pooled(data)
    killed = worker_pids()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert await pooled(data) == in_thread(data)  # the broken pool: described in a thread instead
    assert describing._broken.is_set()
    assert await pooled(data) == in_thread(data)
    assert not worker_pids() - killed  # no new pool was started


_KILLED_WHILE_STARTING = """
import os, signal
from dataclasses import replace
from dicom_core.operations import describing
from dicom_core.settings import Limits
if __name__ == "__main__":
    describing.start(replace(Limits(), parse_processes=2))
    print(*describing._pools[2]._processes, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # before its workers have imported anything
"""


def test_workers_of_a_server_killed_while_they_start_do_not_outlive_it(tmp_path):
    script = tmp_path / "killed_while_starting.py"
    script.write_text(_KILLED_WHILE_STARTING)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=60)
    assert ran.returncode == -signal.SIGKILL
    workers = [int(pid) for pid in ran.stdout.split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 30  # a worker finds out once it has started: about a second here
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a parse worker outlived its server"
