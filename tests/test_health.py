"""The 30-second health check: Healthy, Degraded with cause and action when the lake refuses writes, Healthy again."""

from __future__ import annotations

import asyncio
import time

from dicom_core.operations.health import DEGRADED, HEALTHY, health_status, write_health_file
from dicom_core.operations.reconcile import contract_files
from dicom_core.services import Services
from tests.faults import failing_from, refused


async def test_healthy_then_degraded_on_403_then_healthy_again(client, services, settings, monkeypatch):
    status = await write_health_file(services)
    assert status.status == HEALTHY
    files = [f.path async for f in services.lake.list(services.layout.health_folder)]
    assert files == [f"{services.layout.health_folder}health-check.txt"]
    assert await contract_files(services) == []  # never DICOM data
    reached = status.lake_last_reached

    monkeypatch.setattr(services.lake, "write", failing_from(services.lake.write, 1, refused))
    degraded = await write_health_file(services)
    assert degraded.status == DEGRADED
    assert degraded.lake_last_reached == reached
    assert "403" in degraded.cause
    assert "Storage Blob Data Contributor" in degraded.action and settings.file_system in degraded.action
    response = await client.get("/v2/health/check")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "Degraded" and "Storage Blob Data Contributor" in body["action"]

    # Another host, with its own memory, answers from the shared table.
    other = await Services.open(settings)
    try:
        assert (await health_status(other)).status == DEGRADED
    finally:
        await other.close()

    monkeypatch.undo()
    assert (await write_health_file(services)).status == HEALTHY
    response = await client.get("/v2/health/check")
    assert response.status_code == 200
    assert response.json()["status"] == "Healthy" and "cause" not in response.json()


async def test_unreachable_lake_is_degraded_with_a_network_hint(services, monkeypatch):
    monkeypatch.setattr(services.lake, "write", failing_from(services.lake.write, 1))
    status = await write_health_file(services)
    assert status.status == DEGRADED
    assert "could not be reached" in status.cause and "DicomLake" in status.action


async def test_health_check_needs_no_credentials_and_no_partition(client):
    response = await client.get("/v2/health/check")
    assert response.status_code == 200
    assert response.json()["status"] == "Healthy"
    assert (await client.get("/v2/partitions/p/health/check")).status_code == 404


async def test_the_local_server_writes_the_health_file_in_the_background(settings, services, tmp_path):
    import httpx

    from tests.server import running_server

    with running_server(settings, tmp_path / "server.log") as (url, _):
        # The first check starts with the server, beside its first answers; the next comes 30 s later.
        deadline = time.monotonic() + 10
        while not (written := [f async for f in services.lake.list(services.layout.health_folder)]):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert written, "written at startup"
        response = httpx.get(f"{url}/health/check", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "Healthy"
