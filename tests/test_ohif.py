"""The OHIF Viewer shows a stored CT study in a real browser.

The viewer (the built ``@ohif/app``) is served by bench/ohif.py, as for the benchmark's viewer scenario, with
an ``app-config.js`` whose DICOMweb data source is the service, started as the README starts it with
``DICOM_CORS_ORIGINS`` set to the viewer's origin. ``bench/ohif.mjs`` drives Debian's Chromium through
playwright-core: study list, study, Basic Viewer, and waits until the viewport shows the image. The
screenshots and the browser log stay in ``test-artifacts/ohif/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from bench.ohif import CHROMIUM, DRIVER, VIEWER_DIST, app_config, viewer_server
from dicom_core.local.azurite import REPOSITORY_ROOT
from dicom_core.settings import Settings
from tests.dicom_files import multipart, new_instance, stow_headers
from tests.environments import ARTIFACTS
from tests.server import running_server

SLICES = 8
STUDY_DESCRIPTION = "OHIF browser test"
DRIVER_TIMEOUT_SECONDS = 330  # above the sum of the driver's own step timeouts
# What a viewport showing the CT image looks like in the screenshot (same measures as the driver's).
BRIGHT_LUMINANCE = 40
MIN_BRIGHT_FRACTION = 0.2
MIN_STDDEV = 20.0


def store_ct_series(url: str) -> None:
    """Store a CT series of SLICES slices: pydicom's CT_small with new UIDs and positions 5 mm apart."""
    study, series = generate_uid(), generate_uid()
    slices = [
        new_instance(
            study=study,
            series=series,
            patient_id="OHIF-1",
            PatientName="Viewer^Browser",
            StudyDescription=STUDY_DESCRIPTION,
            SeriesDescription="CT slices",
            InstanceNumber=number + 1,
            ImagePositionPatient=[-158.135803, -179.035797, -75.699997 + 5.0 * number],
            SliceLocation=-75.699997 + 5.0 * number,
        )
        for number in range(SLICES)
    ]
    body, boundary = multipart(slices)
    response = httpx.post(f"{url}/studies", content=body, headers=stow_headers(boundary), timeout=60)
    assert response.status_code == 200, response.text


def screenshot_stats(path: Path) -> tuple[float, float]:
    """The fraction of bright pixels and the standard deviation of luminance in a screenshot."""
    luminance = numpy.asarray(Image.open(path).convert("L"), dtype=numpy.float64)
    return float((luminance > BRIGHT_LUMINANCE).mean()), float(luminance.std())


def test_ohif_viewer_shows_a_stored_ct_study(settings: Settings, tmp_path: Path) -> None:
    """Study list, study, Basic Viewer: the viewport shows the CT image fetched from the service."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `bash scripts/setup.sh` as root (it installs Debian's chromium)"
    assert (VIEWER_DIST / "index.html").exists(), f"{VIEWER_DIST} is missing: run `bash scripts/setup.sh` (it fetches @ohif/app)"
    node = shutil.which("node")
    assert node, "node is missing: run `bash scripts/setup.sh`"
    artifacts = ARTIFACTS / "ohif"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    viewport = artifacts / "viewport.png"

    with (
        viewer_server() as (origin, viewer),
        running_server(settings, tmp_path / "server.log", extra_env={"DICOM_CORS_ORIGINS": origin}) as (url, _),
    ):
        viewer.app_config = app_config(url).encode()
        store_ct_series(url)
        try:
            completed = subprocess.run(
                [node, str(DRIVER), origin, url, STUDY_DESCRIPTION, str(artifacts)],
                cwd=REPOSITORY_ROOT,
                capture_output=True,
                text=True,
                timeout=DRIVER_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"the browser driver did not finish within {DRIVER_TIMEOUT_SECONDS} s: see {artifacts}")
    shutil.copy(tmp_path / "server.log", artifacts / "server.log")
    lines = completed.stdout.strip().splitlines()
    assert lines, f"the browser driver printed nothing (exit {completed.returncode}): {completed.stderr[-2000:]}"
    result = json.loads(lines[-1])
    assert result["ok"], (
        f"OHIF failed at '{result['step']}': {result['error']}. "
        f"Screenshots: {artifacts / 'page.png'}, {viewport}; browser log: {artifacts / 'browser.log'}"
    )
    assert result["frames"] >= 1, f"the viewer showed an image without fetching a frame from the service: {result}"
    assert not result["serviceErrors"], f"the service refused requests of the viewer: {result['serviceErrors']}"
    bright, stddev = screenshot_stats(viewport)
    assert bright >= MIN_BRIGHT_FRACTION and stddev >= MIN_STDDEV, (
        f"the viewport looks blank ({bright:.1%} bright pixels, luminance stddev {stddev:.1f}): see {viewport}"
    )
