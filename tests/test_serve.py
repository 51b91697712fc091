"""``python -m dicom_core serve`` without a configured lake: the Azurite it starts is the one it uses, and it stops with it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from dicom_core.local import azurite
from dicom_core.local.azurite import connection_string
from tests.dicom_files import multipart, new_instance, stow_headers, uids
from tests.server import start_server

DEFAULT_PORTS = (10000, 10001, 10002)
_STARTED = re.compile(r"Azurite started \(blob port (\d+), table port (\d+)")


@contextmanager
def _ports_taken(ports: tuple[int, ...]) -> Iterator[None]:
    """Something else listening on ``ports`` (a port some other program holds already counts as taken)."""
    with ExitStack() as stack:
        for port in ports:
            listener = stack.enter_context(socket.socket())
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", port))
                listener.listen()
            except OSError:
                continue  # taken already
        yield


def _start_serve(tmp_path: Path, *arguments: str) -> tuple[subprocess.Popen, str, Path]:
    """``serve`` as a new user runs it: no DicomLake in the environment, Azurite data in ``tmp_path``."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("DicomLake")}
    environment.pop("DicomIndex", None)
    log = tmp_path / "serve.log"
    url, process = start_server(environment, log, ("--azurite-data", str(tmp_path / "azurite"), *arguments))
    return process, url, log


def _emulator_ports(log: Path) -> tuple[int, int]:
    found = _STARTED.search(log.read_text())
    assert found, f"serve did not say which Azurite it started:\n{log.read_text()}"
    return int(found.group(1)), int(found.group(2))


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_until_closed(port: int, seconds: float = 60) -> bool:
    # Generous: Azurite saves its metadata when it stops, which takes long on a loaded machine.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _listening(port):
            return True
        time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def test_serve_with_the_default_ports_taken_stores_into_the_emulator_it_started(tmp_path):
    with _ports_taken(DEFAULT_PORTS):
        process, url, log = _start_serve(tmp_path)
        try:
            blob_port, table_port = _emulator_ports(log)
            assert blob_port not in DEFAULT_PORTS and table_port not in DEFAULT_PORTS
            data = new_instance()
            body, boundary = multipart([data])
            response = httpx.post(f"{url}/studies", content=body, headers=stow_headers(boundary), timeout=30)
            assert response.status_code == 200, response.text
            study, series, sop, _ = uids(data)
            found = httpx.get(f"{url}/studies", params={"StudyInstanceUID": study}, timeout=30).json()
            assert [match["0020000D"]["Value"][0] for match in found] == [study]
            # The file is in the emulator serve started, at its contract path.
            blobs = BlobServiceClient.from_connection_string(connection_string("127.0.0.1", blob_port, blob_port, table_port))
            with blobs:
                names = [blob.name for blob in blobs.get_container_client("dicom").list_blobs()]
            assert f"AHDS/local/dicom/dicom/Microsoft.Default/{study}/{series}/{sop}.dcm" in names
        finally:
            _stop(process)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_serve_stops_its_emulator_on_every_way_out(tmp_path, stop_signal):
    process, _, log = _start_serve(tmp_path)
    try:
        blob_port, table_port = _emulator_ports(log)
        assert _listening(blob_port) and _listening(table_port)
        process.send_signal(stop_signal)
        process.wait(timeout=30)
        assert _wait_until_closed(blob_port), f"Azurite still listens on {blob_port} after {stop_signal.name}"
        assert _wait_until_closed(table_port), f"Azurite still listens on {table_port} after {stop_signal.name}"
    finally:
        _stop(process)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
def test_serve_with_workers_stores_and_stops_its_workers_and_emulator(tmp_path, stop_signal):
    process, url, log = _start_serve(tmp_path, "--workers", "2")
    try:
        blob_port, table_port = _emulator_ports(log)
        data = new_instance()
        body, boundary = multipart([data])
        response = httpx.post(f"{url}/studies", content=body, headers=stow_headers(boundary), timeout=30)
        assert response.status_code == 200, response.text
        process.send_signal(stop_signal)
        process.wait(timeout=30)
        http_port = int(url.split(":")[2].split("/")[0])
        for port in (http_port, blob_port, table_port):
            assert _wait_until_closed(port), f"port {port} open after {stop_signal.name}: a worker or Azurite outlived serve"
    finally:
        _stop(process)


def test_the_emulator_exits_by_itself_when_asked_to_stop(tmp_path):
    # Not killed after its grace period: with telemetry on, Azurite's exit waited on a report it
    # could not send from a machine without internet access, and stop() had to SIGKILL it.
    emulator = azurite.start(tmp_path / "azurite")
    with BlobServiceClient.from_connection_string(emulator.connection_string) as blobs:
        blobs.create_container("dicom")
    emulator.stop()
    assert emulator.process.returncode == 0


def test_an_emulator_in_memory_starts_and_keeps_nothing_on_disk(tmp_path):
    # The benchmark's scale runs keep Azurite in memory; Azurite refuses --inMemoryPersistence beside --location.
    emulator = azurite.start(tmp_path / "azurite", in_memory=True)
    try:
        # Every entity is in Node's heap: its limit is raised from Node's default, about 4 GB.
        environment = Path(f"/proc/{emulator.process.pid}/environ").read_bytes().split(b"\0")
        heap = [entry for entry in environment if entry.startswith(b"NODE_OPTIONS=")]
        assert heap and b"--max-old-space-size=" in heap[0], heap
        with BlobServiceClient.from_connection_string(emulator.connection_string) as blobs:
            blobs.create_container("dicom").upload_blob("a.dcm", b"DICM")
            assert blobs.get_container_client("dicom").download_blob("a.dcm").readall() == b"DICM"
    finally:
        emulator.stop()
    assert not any((tmp_path / "azurite").iterdir())
