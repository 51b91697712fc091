"""Start Azurite, the local Azure Storage emulator, for the local server, tests and benchmarks.

Azurite comes from npm (``package.json`` at the repository root). It runs with
``--skipApiVersionCheck`` because the Python SDKs speak newer API versions than it
knows. On Linux the emulator is told to stop when the process that started it dies,
whatever the way out (SIGKILL included), so it never outlives the server or the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_core.local.lifetime import stop_with_parent

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

# Azurite's well-known development account. Its key is public (documented by
# Microsoft for every Azurite install); it is the only key this repository holds.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(host: str, blob_port: int, queue_port: int, table_port: int) -> str:
    """The connection string of an Azurite listening on the given ports."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{blob_port}/{ACCOUNT_NAME};"
        f"QueueEndpoint=http://{host}:{queue_port}/{ACCOUNT_NAME};"
        f"TableEndpoint=http://{host}:{table_port}/{ACCOUNT_NAME};"
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_executable() -> str:
    """The azurite launcher installed by ``npm ci``, else one on PATH."""
    local = REPOSITORY_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise FileNotFoundError("Azurite is not installed: run `npm ci` in the repository root")


@dataclass
class Azurite:
    """A running Azurite process and how to reach it."""

    process: subprocess.Popen
    connection_string: str
    blob_port: int
    table_port: int
    location: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    location: Path,
    *,
    host: str = "127.0.0.1",
    blob_port: int | None = None,
    queue_port: int | None = None,
    table_port: int | None = None,
    in_memory: bool = False,
    timeout: float = 30.0,
    log_file: Path | None = None,
) -> Azurite:
    """Start Azurite keeping its data in ``location`` and wait until it accepts connections.

    With ``in_memory`` it keeps nothing on disk (``--inMemoryPersistence``, which Azurite
    refuses beside ``--location``); ``location`` then only holds what the caller puts there.
    Every entity and blob record is then in Node's heap, whose default limit (about 4 GB)
    a benchmark archive of 60,000 instances reached: Azurite stopped answering for 20 s
    at a time, collecting garbage. So its heap may grow to half the machine's memory.
    """
    location.mkdir(parents=True, exist_ok=True)
    blob_port = blob_port or free_port()
    queue_port = queue_port or free_port()
    table_port = table_port or free_port()
    command = [
        find_executable(),
        "--skipApiVersionCheck",
        "--loose",
        # Azurite reports usage to Microsoft unless told not to; on a machine without internet access
        # its exit then waits about ten seconds on that report, and a hospital's data stays local anyway.
        "--disableTelemetry",
        "--blobHost",
        host,
        "--blobPort",
        str(blob_port),
        "--queueHost",
        host,
        "--queuePort",
        str(queue_port),
        "--tableHost",
        host,
        "--tablePort",
        str(table_port),
    ]
    command += ["--inMemoryPersistence"] if in_memory else ["--location", str(location)]
    environment = dict(os.environ)
    if in_memory:
        heap = f"--max-old-space-size={_half_the_memory_mib()}"
        environment["NODE_OPTIONS"] = f"{environment.get('NODE_OPTIONS', '')} {heap}".strip()
    before_exec = stop_with_parent if sys.platform == "linux" else None
    # The child keeps its own copy of the log file's descriptor.
    with open(log_file, "ab") if log_file else contextlib.nullcontext(subprocess.DEVNULL) as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=before_exec, env=environment)
    deadline = time.monotonic() + timeout
    for port in (blob_port, queue_port, table_port):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Azurite exited with code {process.returncode} while starting")
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    process.kill()
                    raise TimeoutError(f"Azurite did not listen on port {port} within {timeout} s") from None
                time.sleep(0.1)
    return Azurite(
        process=process,
        connection_string=connection_string(host, blob_port, queue_port, table_port),
        blob_port=blob_port,
        table_port=table_port,
        location=location,
    )


def _half_the_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 // 2**20
