"""The OHIF Viewer opening a 300-slice 512x512 CT series: time to the first image and to every frame read.

The series (bench/corpus.py ``load_or_generate_volume``) is stored with one STOW-RS request
(not measured) beside the corpus. Then, VIEWER_SAMPLES times, a fresh headless Chromium opens
the viewer on that study (bench/ohif.mjs) with the study prefetcher reading the whole series,
and reports when the viewport first showed the image and when the last frame response was
read, both from the moment it asked for the viewer page. Both servers get the same viewer,
configuration and browser.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.client import client
from bench.corpus import Corpus, load_or_generate_volume
from bench.ohif import CHROMIUM, DRIVER, VIEWER_DIST, app_config, viewer_server
from bench.process import BenchmarkError
from bench.scenarios import Result, latency, scenario
from bench.stow import store_series

SLICES = 300
SIZE = 512
VIEWER_SAMPLES = 3
DRIVER_TIMEOUT_SECONDS = 600  # above the sum of the driver's own step timeouts


@scenario("viewer", optional=True)
def viewer(base_url: str, corpus: Corpus) -> list[Result]:
    """OHIF opens a 300-slice 512x512 CT series: ms to the first image and to all frames read (3 fresh browsers)."""
    node = shutil.which("node")
    if node is None or not CHROMIUM.exists() or not (VIEWER_DIST / "index.html").exists():
        raise BenchmarkError(f"the viewer scenario needs node, {CHROMIUM} and {VIEWER_DIST}: run `bash scripts/setup.sh`")
    volume = load_or_generate_volume(SLICES, SIZE)
    study = volume.big_series_study
    assert study is not None
    with client() as http:
        store_series(http, base_url, volume, study.series[0])
    first_image, all_frames = [], []
    with viewer_server() as (origin, server):
        server.app_config = app_config(base_url, prefetch_series=True).encode()
        for _ in range(VIEWER_SAMPLES):
            timings = _open(node, origin, base_url, study.study_instance_uid)
            first_image.append(timings["firstImage"] / 1000)
            all_frames.append(timings["allFrames"] / 1000)
    name = f"OHIF, {SLICES}-slice {SIZE}x{SIZE} CT series"
    return [latency(f"{name}: first image", first_image), latency(f"{name}: all frames read", all_frames)]


def _open(node: str, origin: str, base_url: str, study: str) -> dict[str, float]:
    """One run of the driver in a fresh browser; its timings, or BenchmarkError saying where it stopped."""
    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as artifacts:
        try:
            completed = subprocess.run(
                [node, str(DRIVER), origin, base_url, "", artifacts, study, str(SLICES)],
                cwd=DRIVER.parent.parent,
                capture_output=True,
                text=True,
                timeout=DRIVER_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"the viewer driver did not finish within {DRIVER_TIMEOUT_SECONDS} s") from None
        lines = completed.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {}
        if not result.get("ok"):
            log = (Path(artifacts) / "browser.log").read_text(errors="replace")[-2000:] if lines else completed.stderr[-2000:]
            raise BenchmarkError(f"the viewer stopped at {result.get('step')!r}: {result.get('error')}\n{log}")
        if result["serviceErrors"]:
            raise BenchmarkError(f"the server refused requests of the viewer: {result['serviceErrors'][:5]}")
        return result["timings"]
