"""``python -m bench``: store a synthetic corpus into our service and into Orthanc, and compare.

See docs/benchmark.md for what is measured and how to read the results.
"""

from __future__ import annotations

import argparse
import sys

from bench import report
from bench.corpus import load_or_generate
from bench.run import LAUNCHERS, run
from bench.scenarios import registered


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    available = registered()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--instances",
        type=int,
        default=1000,
        help="instances in the corpus (default 1000)",
    )
    parser.add_argument("--series-size", type=int, default=50, help="instances per series (default 50)")
    parser.add_argument(
        "--big-series",
        type=int,
        default=0,
        metavar="N",
        help="add one study with a single series of N instances",
    )
    parser.add_argument("--only", choices=sorted(LAUNCHERS), help="run against one server only")
    parser.add_argument(
        "--scenarios",
        default=",".join(name for name, entry in available.items() if not entry.optional),
        help=f"comma-separated scenarios to run, among: {', '.join(available)} "
        f"(default all but {', '.join(name for name, entry in available.items() if entry.optional)}; stow always runs first)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="fresh runs of every server, in alternating order; figures are medians (default 3)",
    )
    parser.add_argument(
        "--azurite-in-memory",
        action="store_true",
        help="run our Azurite without files (--inMemoryPersistence): for scale runs, where rewriting its "
        "database every 5 s dominates",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the servers running at the end, until Ctrl-C",
    )
    options = parser.parse_args(argv)
    if min(options.instances, options.series_size, options.rounds) < 1 or options.big_series < 0:
        parser.error("--instances, --series-size and --rounds must be at least 1, --big-series at least 0")
    names = [name.strip() for name in options.scenarios.split(",") if name.strip()]
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; available: {', '.join(available)}")
    options.scenarios = [scenario for name, scenario in available.items() if name == "stow" or name in names]
    return options


def main(argv: list[str] | None = None) -> int:
    options = arguments(argv)
    corpus = load_or_generate(options.instances, options.series_size, options.big_series)
    print(f"corpus: {corpus.summary()} in {corpus.root}")
    servers = [options.only] if options.only else list(LAUNCHERS)
    outcome = run(corpus, options.scenarios, servers, options.rounds, options.keep, options.azurite_in_memory)
    print()
    print(report.table(outcome.results, outcome.errors))
    settings = {
        "instances": options.instances,
        "series_size": options.series_size,
        "big_series": options.big_series,
        "servers": servers,
        "rounds": options.rounds,
        "azurite_in_memory": options.azurite_in_memory,
        "scenarios": [scenario.name for scenario in options.scenarios],
    }
    document = report.document(outcome.results, outcome.errors, outcome.versions, corpus.summary(), settings)
    print(f"results written to {report.write(document)}")
    return 1 if outcome.errors else 0


if __name__ == "__main__":
    sys.exit(main())
