"""Where instances are described: in worker processes, so that parsing uses every core.

Parsing a header with pydicom and building its DICOM JSON (operations/indexing.py
``describe_instance``) is pure Python, so in the server's process it holds the GIL: 43 %
of that process's CPU in a STOW of 1,000 CT instances, measured with py-spy, while the
second core waited. ``describe`` sends the bytes of a part held in memory (at most
``spool_memory_bytes``, 1 MiB) to a pool of ``DICOM_PARSE_PROCESSES`` worker processes
and gets its description back, plain data. A part spooled to disk, where the upload
dominates anyway, and every part when the setting is 0, is described in a thread of the
server's process as before.

A pool belongs to the process (one per size), is started by the app's startup or at its first use, and stops
with the process; its workers are started fresh (``spawn``, never a fork of a process
running an event loop and threads) and stop when the server dies, SIGKILL included.
A worker that dies (killed, or unable to start: a script that embeds the app without an
``if __name__ == "__main__"`` guard cannot spawn workers) breaks its pool: from then on
this process describes every instance in a thread, as it would with 0 processes, and
logs why once.
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import BinaryIO

from dicom_core.dicom.errors import InvalidInstance
from dicom_core.dicom.extended_tags import TagDeclaration
from dicom_core.dicom.structure import StructureLimits
from dicom_core.local.lifetime import stop_with_parent
from dicom_core.operations.indexing import DescribedInstance, describe_instance, structure_limits
from dicom_core.services import Services
from dicom_core.settings import Limits
from dicom_core.storage.lake import LakeFile

logger = logging.getLogger(__name__)
_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()
_broken = threading.Event()  # a pool broke: threads from then on


async def describe(file: BinaryIO, size: int, limits: Limits, tags: Sequence[TagDeclaration] = ()) -> DescribedInstance:
    """``describe_instance`` of the ``size`` bytes in ``file``, in a worker process when it can; raises InvalidInstance."""
    structure = structure_limits(limits)
    if limits.parse_processes == 0 or size > limits.spool_memory_bytes or _broken.is_set():
        return await asyncio.to_thread(describe_instance, file, size, structure, tags)
    file.seek(0)
    data = file.read(size)
    pool = _pool(limits.parse_processes)
    try:
        return await asyncio.wrap_future(pool.submit(_describe_bytes, data, structure, tuple(tags)))
    except BrokenProcessPool as broken:
        if not _broken.is_set():
            _broken.set()
            logger.warning("the parse worker processes stopped (%s); parsing in threads from now on", broken)
        pool.shutdown(wait=False, cancel_futures=True)
        return await asyncio.to_thread(describe_instance, io.BytesIO(data), size, structure, tags)


def start(limits: Limits) -> None:
    """Start the pool's workers now, so the first store does not wait for them to import (about a second)."""
    if limits.parse_processes and not _broken.is_set():
        pool = _pool(limits.parse_processes)
        for _ in range(limits.parse_processes):
            pool.submit(int)


def _describe_bytes(data: bytes, structure: StructureLimits, tags: Sequence[TagDeclaration]) -> DescribedInstance:
    """In a worker: the description of one instance's bytes."""
    return describe_instance(io.BytesIO(data), len(data), structure, tags)


def _pool(processes: int) -> ProcessPoolExecutor:
    with _pools_lock:
        if processes not in _pools:
            _pools[processes] = ProcessPoolExecutor(
                max_workers=processes, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_started
            )
        return _pools[processes]


def _worker_started() -> None:
    if sys.platform == "linux":
        stop_with_parent()
        # A server killed while this worker was still starting sent no signal: it had none to send yet.
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:
            os._exit(0)


async def describe_file(
    services: Services, path: str, file: LakeFile, tags: Sequence[TagDeclaration] = ()
) -> tuple[str | None, DescribedInstance | None]:
    """(problem, None) for a file that is not a storable instance, else (None, its description with ``tags``)."""
    with tempfile.SpooledTemporaryFile(max_size=services.settings.limits.spool_memory_bytes) as spool:
        async for chunk in services.lake.stream(path, etag=file.etag):
            spool.write(chunk)
        try:
            return None, await describe(spool, file.size, services.settings.limits, tags)
        except InvalidInstance as invalid:
            return f"not a storable DICOM instance: {invalid}", None
