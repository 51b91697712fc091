"""Run the selected scenarios against each server in turn, never two servers at once."""

from __future__ import annotations

import functools
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from azure.core.exceptions import AzureError

from bench import orthanc, ours
from bench.corpus import Corpus
from bench.process import BenchmarkError, Server, cpu_seconds
from bench.scenarios import Result, Scenario, combine, cpu_per_instance

LAUNCHERS: dict[str, Callable[[Path], AbstractContextManager[Server]]] = {
    "ours": ours.running,
    "orthanc": orthanc.running,
}
"""Servers in running order."""
RAW = "raw"
"""The name the raw-storage ceilings are reported under, beside the servers."""


@dataclass
class Outcome:
    """What a run measured, per server name: each round's results, and their median."""

    rounds: dict[str, list[list[Result]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def results(self) -> dict[str, list[Result]]:
        return {name: combine(rounds) for name, rounds in self.rounds.items() if rounds}


def warm_up(server: Server) -> None:
    """One unmeasured search, so that no first measured request pays for lazy set-up."""
    httpx.get(
        f"{server.base_url}/studies",
        params={"limit": 1},
        headers={"Accept": "application/dicom+json"},
        timeout=60,
    )


def measure(server: Server, corpus: Corpus, scenarios: list[Scenario], errors: dict[str, str]) -> dict[str, list[Result]]:
    """Run ``scenarios`` in order against a freshly started, empty ``server``; results by server name.

    When the server exposes its storage, each scenario's raw-storage ceiling runs right
    after the scenario, on the files it stored, and its results go under RAW. A ceiling that
    fails is reported in ``errors`` and the server's scenarios go on.
    """
    corpus.warm()
    warm_up(server)
    results: dict[str, list[Result]] = {server.name: []}
    for entry in scenarios:
        print(f"{server.name}: {entry.name} ({entry.description})")
        before = cpu_seconds(server.processes)
        results[server.name] += entry.run(server.base_url, corpus)
        if entry.cpu and server.processes:
            spent = cpu_seconds(server.processes) - before
            results[server.name].append(cpu_per_instance(entry.name, spent, corpus.instance_count))
        if entry.ceiling is not None and server.lake_connection is not None:
            print(f"{RAW}: {entry.name}, the same files through the Azure SDK alone")
            # The raw client is this process; the storage is among the server's processes (ours idles).
            before = cpu_seconds(server.processes) + time.process_time()
            try:
                results.setdefault(RAW, []).extend(entry.ceiling(server.lake_connection, corpus))
            except AzureError as error:
                failed = f"{RAW} {entry.name}"
                errors[failed] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                print(f"{failed}: {errors[failed]}")
                continue
            if entry.cpu:
                spent = cpu_seconds(server.processes) + time.process_time() - before
                results[RAW].append(cpu_per_instance(entry.name, spent, corpus.instance_count))
    return results


def run(
    corpus: Corpus,
    scenarios: list[Scenario],
    servers: list[str],
    rounds: int,
    keep: bool,
    azurite_in_memory: bool = False,
) -> Outcome:
    """For each round, start each server fresh, measure it, and stop it before the next.

    Rounds alternate the order of the servers (A B, B A, A B...) so that a drift of
    the machine's speed does not favour one. With ``keep``, the servers of the last
    round stay up (idle) until the user presses Ctrl-C. ``azurite_in_memory`` runs our
    Azurite without files (``ours.running``).
    """
    outcome = Outcome()
    kept_running: list[str] = []
    with ExitStack() as kept:
        workdir = Path(kept.enter_context(tempfile.TemporaryDirectory(prefix="dicom-bench-")))
        for number in range(rounds):
            order = servers if number % 2 == 0 else servers[::-1]
            for name in (name for name in order if name not in outcome.errors):
                print(f"round {number + 1} of {rounds}: {name}")
                data = workdir / f"{name}-{number + 1}"
                with ExitStack() as stack:
                    try:
                        launch = LAUNCHERS[name]
                        if name == "ours" and azurite_in_memory:
                            launch = functools.partial(ours.running, azurite_in_memory=True)
                        server = stack.enter_context(launch(data))
                        outcome.versions[name] = server.version
                        for measured, results in measure(server, corpus, scenarios, outcome.errors).items():
                            outcome.rounds.setdefault(measured, []).append(results)
                    except (BenchmarkError, httpx.HTTPError) as error:
                        outcome.errors[name] = f"{type(error).__name__}: {error}"
                        print(f"{name}: {outcome.errors[name]}")
                        continue
                    if keep and number == rounds - 1:
                        kept.enter_context(stack.pop_all())
                        kept_running.append(f"{name} at {server.base_url}, data in {data}")
                        continue
                shutil.rmtree(data, ignore_errors=True)
        if kept_running:
            _wait_for_interrupt(kept_running)
    return outcome


def _wait_for_interrupt(servers: list[str]) -> None:
    """Block until Ctrl-C or SIGTERM (also when started in the background, where SIGINT is ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print("Kept running:", *servers, "Press Ctrl-C to stop them.", sep="\n  ")
    try:
        signal.pause()
    except KeyboardInterrupt:
        print()
