"""The scenario registry and the shape of a measurement.

A scenario is a function ``(base_url, corpus) -> list[Result]`` registered with
``@scenario("name")`` in a module listed in ``MODULES``. It runs against one server
at a time, after the corpus has been stored into it (by the ``stow`` scenario, which
always runs first). Adding a scenario is a function, the decorator, and, for a new
module, one line in ``MODULES``.

A scenario may also have a raw-storage ceiling, registered with ``@ceiling("name")``:
a function ``(connection_string, corpus) -> list[Result]`` that does, with the Azure
SDK alone, the storage operations the scenario cannot do without, on the files our
server stored (the same storage, right after the scenario ran against us). Its results
carry the scenario's result names, so the report prints them side by side.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from bench.corpus import Corpus

MODULES = ("bench.stow", "bench.search", "bench.retrieve", "bench.extended", "bench.viewer")
"""Modules holding scenarios, in the order they run; ``bench.stow`` must stay first."""


@dataclass(frozen=True)
class Result:
    """One measured figure of one scenario on one server.

    ``value`` is the headline figure: a throughput when ``higher_is_better``, else a
    median latency. Latencies are in milliseconds and also carry their 95th percentile.
    """

    name: str
    unit: str
    value: float
    higher_is_better: bool
    p95: float | None = None
    detail: dict[str, object] = field(default_factory=dict)


ScenarioFunction = Callable[[str, Corpus], list[Result]]
CeilingFunction = Callable[[str, Corpus], list[Result]]
"""``(connection string of our storage, corpus) -> results`` of the raw storage operations."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    run: ScenarioFunction
    ceiling: CeilingFunction | None = None
    optional: bool = False
    """Run only when named in ``--scenarios`` (a slow one)."""
    cpu: bool = False
    """Also report the CPU time per instance of the corpus that the server and its storage spent on it."""


_REGISTRY: dict[str, Scenario] = {}


def scenario(name: str, *, optional: bool = False, cpu: bool = False) -> Callable[[ScenarioFunction], ScenarioFunction]:
    """Register the decorated function as scenario ``name``; its docstring describes it."""

    def register(function: ScenarioFunction) -> ScenarioFunction:
        if name in _REGISTRY:
            raise ValueError(f"scenario {name!r} is registered twice")
        description = (function.__doc__ or "").strip().splitlines()[0]
        _REGISTRY[name] = Scenario(name, description, function, optional=optional, cpu=cpu)
        return function

    return register


def ceiling(name: str) -> Callable[[CeilingFunction], CeilingFunction]:
    """Register the decorated function as the raw-storage ceiling of scenario ``name`` (registered before it)."""

    def register(function: CeilingFunction) -> CeilingFunction:
        if _REGISTRY[name].ceiling is not None:
            raise ValueError(f"scenario {name!r} has two ceilings")
        _REGISTRY[name] = replace(_REGISTRY[name], ceiling=function)
        return function

    return register


def registered() -> dict[str, Scenario]:
    """Every scenario, in running order."""
    for module in MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def throughput(
    name: str,
    count: int,
    seconds: float,
    unit: str = "instances/s",
    **detail: float | str,
) -> Result:
    """A throughput result: ``count`` items in ``seconds``."""
    return Result(
        name,
        unit,
        count / seconds,
        True,
        detail={"count": count, "seconds": round(seconds, 3), **detail},
    )


def latency(name: str, samples: Sequence[float], **detail: float | str) -> Result:
    """A latency result from durations in seconds: median and 95th percentile, in milliseconds."""
    milliseconds = sorted(sample * 1000 for sample in samples)
    p95 = statistics.quantiles(milliseconds, n=20, method="inclusive")[-1] if len(milliseconds) > 1 else milliseconds[0]
    return Result(
        name,
        "ms",
        statistics.median(milliseconds),
        False,
        p95,
        {"samples": len(milliseconds), **detail},
    )


def cpu_per_instance(scenario_name: str, seconds: float, instances: int) -> Result:
    """The CPU time a scenario cost all the processes measured, per instance of the corpus, in milliseconds."""
    return Result(f"{scenario_name}: CPU per instance, all processes", "ms", seconds / instances * 1000, False)


def combine(rounds: list[list[Result]]) -> list[Result]:
    """One result per name: medians over rounds of value and p95.

    ``detail`` is the last round's, plus every round's value under ``rounds``.
    """
    by_name: dict[str, list[Result]] = {}
    for results in rounds:
        for result in results:
            by_name.setdefault(result.name, []).append(result)
    combined = []
    for name, results in by_name.items():
        last = results[-1]
        p95s = [result.p95 for result in results if result.p95 is not None]
        combined.append(
            Result(
                name,
                last.unit,
                statistics.median(result.value for result in results),
                last.higher_is_better,
                statistics.median(p95s) if p95s else None,
                {**last.detail, "rounds": [round(r.value, 2) for r in results]},
            )
        )
    return combined
