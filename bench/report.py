"""Print the comparison table and write the results as JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.scenarios import Result

RESULTS = Path(__file__).resolve().parent / "results"
SERVERS = ("ours", "orthanc", "raw")
HEADERS = ("scenario", "ours", "Orthanc", "raw storage", "vs Orthanc", "vs raw")


def ratio(ours: Result | None, other: Result | None) -> float | None:
    """How many times faster ours is than ``other``: > 1 means ours is faster, for throughputs and latencies alike."""
    if ours is None or other is None or not ours.value or not other.value:
        return None
    return ours.value / other.value if ours.higher_is_better else other.value / ours.value


def _index(
    results: dict[str, list[Result]],
) -> tuple[list[str], dict[str, dict[str, Result]]]:
    """Result names in first-seen order, and each server's results by name."""
    names = list(dict.fromkeys(result.name for server in SERVERS for result in results.get(server, [])))
    return names, {server: {result.name: result for result in results.get(server, [])} for server in SERVERS}


def _cell(result: Result | None, error: str | None) -> str:
    if result is None:
        return "failed" if error else "-"
    if result.higher_is_better:
        return f"{result.value:,.0f} {result.unit}"
    if result.p95 is None:
        return f"{result.value:,.1f} ms"
    return f"{result.value:,.1f} ms (p95 {result.p95:,.1f})"


def table(results: dict[str, list[Result]], errors: dict[str, str]) -> str:
    """The comparison as aligned text, one row per measured figure."""
    names, by_name = _index(results)
    rows = [HEADERS]
    for name in names:
        ours, orthanc, raw = (by_name[server].get(name) for server in SERVERS)
        factors = [ratio(ours, orthanc), ratio(ours, raw)]
        rows.append(
            (
                name,
                _cell(ours, errors.get("ours")),
                _cell(orthanc, errors.get("orthanc")),
                _cell(raw, errors.get("ours")),
                *(f"{factor:.2f}x" if factor else "-" for factor in factors),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += [f"{server}: {message}" for server, message in errors.items()]
    lines.append(
        "ratios > 1: ours is faster (ours/other for throughputs, other/ours for latencies); "
        "raw storage is the Azure SDK alone on the files our server stored, so 'vs raw' is at most about 1"
    )
    return "\n".join(lines)


def document(
    results: dict[str, list[Result]],
    errors: dict[str, str],
    versions: dict[str, str],
    corpus: dict[str, int],
    options: dict[str, object],
) -> dict[str, object]:
    """Everything a later reader needs to compare two runs."""
    names, by_name = _index(results)
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "options": options,
        "corpus": corpus,
        "versions": versions,
        "errors": errors,
        "results": [
            {
                "scenario": name,
                **{server: asdict(by_name[server][name]) if name in by_name[server] else None for server in SERVERS},
                "ratio": ratio(by_name["ours"].get(name), by_name["orthanc"].get(name)),
                "ratio_raw": ratio(by_name["ours"].get(name), by_name["raw"].get(name)),
            }
            for name in names
        ],
    }


def write(document: dict[str, object]) -> Path:
    """Write ``results/latest.json`` and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "latest.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path
