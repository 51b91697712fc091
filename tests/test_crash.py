"""Crash consistency under real process kills (docs/reliability.md).

The server runs as a subprocess (``python -m tests.kill_server serve``: the real service
with a kill switch) and is SIGKILLed at a randomized point of a STOW, a DELETE or a mix of
both: the Nth call of a lake or index adapter method. Azurite stays up (killing it loses
writes it had acknowledged, which is the emulator's behaviour, not ours). A fresh server
then takes the client's retry of the same requests, or a reindex runs instead, and the
checker (operations/check.py) must find the archive consistent.

``DICOM_CRASH_POINTS`` kill points per scenario (default 4) and ``DICOM_CRASH_SEED``
choose the points; ``bash scripts/soak.sh`` runs many more.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dicom_core.operations.check import Violation, check
from dicom_core.operations.reconcile import contract_files, reindex
from dicom_core.services import Services
from dicom_core.settings import Settings
from tests.dicom_files import multipart, new_instance, stow_headers, uids
from tests.environments import isolated_settings
from tests.server import running_server

POINTS = int(os.environ.get("DICOM_CRASH_POINTS", "4"))
SEED = int(os.environ.get("DICOM_CRASH_SEED", "20261201"))
SERIES, PER_SERIES = 3, 12
STORE_METHODS = {"Lake.write": SERIES * PER_SERIES, "Index.put_instances": 2, "Lookup.put": 8, "ChangeFeedStore.append": 2}
DELETE_METHODS = {"Lake.delete": SERIES * PER_SERIES, "Index.delete_instance": SERIES * PER_SERIES, "ChangeFeedStore.append": 1}


@dataclass
class Outcome:
    """What one kill point left behind after recovery."""

    spec: str
    violations: list[Violation] = field(default_factory=list)


def kill_points(methods: dict[str, int], count: int, salt: str) -> list[str]:
    """``count`` distinct ``Class.method:N`` specs, N up to the calls the scenario makes of each."""
    chooser = random.Random(f"{SEED}-{salt}")
    every = [f"{method}:{n}" for method, calls in methods.items() for n in range(1, calls + 1)]
    return chooser.sample(every, min(count, len(every)))


def study_parts(series: int = SERIES, per_series: int = PER_SERIES) -> list[bytes]:
    study = uids(new_instance())[0]
    series_uids = [uids(new_instance())[1] for _ in range(series)]
    modalities = ("CT", "MR", "PT")
    return [
        new_instance(study=study, series=uid, modality=modalities[n % 3])
        for n, uid in enumerate(series_uids)
        for _ in range(per_series)
    ]


async def post(client: httpx.AsyncClient, url: str, parts: list[bytes]) -> httpx.Response | None:
    body, boundary = multipart(parts)
    try:
        return await client.post(f"{url}/studies", content=body, headers=stow_headers(boundary))
    except httpx.TransportError:
        return None  # the server died under the request


async def delete(client: httpx.AsyncClient, url: str, path: str) -> httpx.Response | None:
    try:
        return await client.delete(f"{url}{path}")
    except httpx.TransportError:
        return None


def assert_retry_stored_everything(response: httpx.Response | None) -> None:
    """A retry stores what the killed request did not, and calls the rest already stored (45070), nothing else."""
    assert response is not None and response.status_code in (200, 409, 202), response and response.text
    failed = response.json().get("00081198", {}).get("Value", [])
    assert {item["00081197"]["Value"][0] for item in failed} <= {45070}, response.text


async def violations_of(settings: Settings) -> list[Violation]:
    services = await Services.open(settings)
    try:
        return await check(services)
    finally:
        await services.close()


async def repair_by_reindex(settings: Settings) -> None:
    services = await Services.open(settings)
    try:
        summary = await reindex(services, await contract_files(services))
        assert not summary.failed, summary.failed
    finally:
        await services.close()


def killed(settings: Settings, log: Path, spec: str):
    return running_server(settings, log, {"DICOM_TEST_KILL_AT": spec}, module="tests.kill_server")


async def run_store(azurite_server, tmp_path: Path, spec: str, recovery: str) -> Outcome:
    settings = isolated_settings(azurite_server.connection_string)
    parts = study_parts()
    async with httpx.AsyncClient(timeout=60) as client:
        with killed(settings, tmp_path / "killed.log", spec) as (url, _):
            await post(client, url, parts)
        if recovery == "retry":
            with running_server(settings, tmp_path / "server.log") as (url, _):
                assert_retry_stored_everything(await post(client, url, parts))
        else:
            await repair_by_reindex(settings)
    return Outcome(spec, await violations_of(settings))


async def run_delete(azurite_server, tmp_path: Path, spec: str, recovery: str) -> Outcome:
    settings = isolated_settings(azurite_server.connection_string)
    parts = study_parts()
    study = uids(parts[0])[0]
    async with httpx.AsyncClient(timeout=60) as client:
        with running_server(settings, tmp_path / "server.log") as (url, _):
            assert (await post(client, url, parts)).status_code == 200
        with killed(settings, tmp_path / "killed.log", spec) as (url, _):
            first = await delete(client, url, f"/studies/{study}")
        if recovery == "retry":
            with running_server(settings, tmp_path / "server.log") as (url, _):
                retried = await delete(client, url, f"/studies/{study}")
                # The retry finishes a half-done delete (204); only a delete that had completed gives 404.
                completed = first is not None and first.status_code == 204
                assert retried is not None and retried.status_code == (404 if completed else 204), retried.text
                found = await client.get(f"{url}/studies", params={"StudyInstanceUID": study})
                assert found.json() == []
        else:
            await repair_by_reindex(settings)
    return Outcome(spec, await violations_of(settings))


async def run_mixed(azurite_server, tmp_path: Path, spec: str) -> Outcome:
    """Two series stored; then at once a third series, more instances into the second, and a DELETE of the first."""
    settings = isolated_settings(azurite_server.connection_string)
    parts = study_parts()
    study, first_series = uids(parts[0])[:2]
    second_series = uids(parts[PER_SERIES])[1]
    more = [new_instance(study=study, series=second_series, modality="MR") for _ in range(PER_SERIES)]
    stored_first, third = parts[: 2 * PER_SERIES], parts[2 * PER_SERIES :]
    async with httpx.AsyncClient(timeout=60) as client:
        with running_server(settings, tmp_path / "server.log") as (url, _):
            assert (await post(client, url, stored_first)).status_code == 200
        with killed(settings, tmp_path / "killed.log", spec) as (url, _):
            await asyncio.gather(
                post(client, url, third), post(client, url, more), delete(client, url, f"/studies/{study}/series/{first_series}")
            )
        with running_server(settings, tmp_path / "server.log") as (url, _):
            retried = await asyncio.gather(
                post(client, url, third), post(client, url, more), delete(client, url, f"/studies/{study}/series/{first_series}")
            )
            for response in retried[:2]:
                assert_retry_stored_everything(response)
            assert retried[2] is not None and retried[2].status_code in (204, 404), retried[2].text
    return Outcome(spec, await violations_of(settings))


def report(outcomes: list[Outcome]) -> str:
    broken = [outcome for outcome in outcomes if outcome.violations]
    lines = [f"{len(broken)} of {len(outcomes)} kill points left violations"]
    for outcome in broken:
        lines += [f"  {outcome.spec}:"] + [f"    {violation}" for violation in outcome.violations[:8]]
    return "\n".join(lines)


SCENARIOS = {"store": (run_store, STORE_METHODS), "delete": (run_delete, DELETE_METHODS)}


@pytest.mark.slow
@pytest.mark.parametrize("recovery", ["retry", "reindex"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_a_killed_store_or_delete_is_repaired_by_a_retry_or_a_reindex(azurite_server, tmp_path, scenario, recovery):
    run, methods = SCENARIOS[scenario]
    specs = kill_points(methods, POINTS, f"{scenario}-{recovery}")
    outcomes = [await run(azurite_server, tmp_path, spec, recovery) for spec in specs]
    assert all(not outcome.violations for outcome in outcomes), report(outcomes)


@pytest.mark.slow
async def test_a_server_killed_under_mixed_load_is_repaired_by_the_retries(azurite_server, tmp_path):
    methods = {"Lake.write": 2 * PER_SERIES, "Lake.delete": PER_SERIES, "Index.put_instances": 2, "Lookup.put": 6}
    outcomes = [await run_mixed(azurite_server, tmp_path, spec) for spec in kill_points(methods, POINTS, "mixed")]
    assert all(not outcome.violations for outcome in outcomes), report(outcomes)
