"""The OHIF Viewer shows a stored CT study in a real browser.

The viewer is the built ``dist/`` of the npm package ``@ohif/app`` (fetched by scripts/setup.sh into
``node_modules/.ohif-app``), served by a small static server in this test with an ``app-config.js`` whose
DICOMweb data source is the service, started as the README starts it with ``DICOM_CORS_ORIGINS`` set to the
viewer's origin. ``tests/browser/ohif.mjs`` drives Debian's Chromium through playwright-core: study list,
study, Basic Viewer, and waits until the viewport shows the image. The screenshots and the browser log stay in
``test-artifacts/ohif/``.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import httpx
import numpy
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from dicom_core.local.azurite import REPOSITORY_ROOT
from dicom_core.settings import Settings
from tests.dicom_files import multipart, new_instance, stow_headers
from tests.environments import ARTIFACTS
from tests.server import running_server

VIEWER_DIST = REPOSITORY_ROOT / "node_modules" / ".ohif-app" / "dist"
DRIVER = REPOSITORY_ROOT / "tests" / "browser" / "ohif.mjs"
CHROMIUM = Path("/usr/bin/chromium")
SLICES = 8
STUDY_DESCRIPTION = "OHIF browser test"
DRIVER_TIMEOUT_SECONDS = 330  # above the sum of the driver's own step timeouts
# What a viewport showing the CT image looks like in the screenshot (same measures as the driver's).
BRIGHT_LUMINANCE = 40
MIN_BRIGHT_FRACTION = 0.2
MIN_STDDEV = 20.0


def app_config(dicomweb_root: str) -> str:
    """The viewer's app-config.js: one DICOMweb data source, the service (the README shows the same)."""
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "DICOMweb on the data lake",
            "name": "lake",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "maxNumberOfWebWorkers": 2,
        "defaultDataSourceName": "dicomweb",
        "dataSources": [data_source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class ViewerServer(ThreadingHTTPServer):
    """A static server of the built viewer, with the app-config.js set once the service's URL is known."""

    app_config: bytes = b""


class ViewerHandler(SimpleHTTPRequestHandler):
    """Serves the built viewer; unknown paths get index.html (the viewer routes in the page)."""

    server: ViewerServer
    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
    }

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.server.app_config)))
            self.end_headers()
            self.wfile.write(self.server.app_config)
            return
        if not Path(self.translate_path(path)).is_file():
            self.path = "/index.html"
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        """Quiet: the browser log in test-artifacts records what the page asked for."""


@contextmanager
def viewer_server() -> Iterator[tuple[str, ViewerServer]]:
    """Serve the OHIF Viewer on a free loopback port; yield its origin and the server."""
    server = ViewerServer(("127.0.0.1", 0), functools.partial(ViewerHandler, directory=str(VIEWER_DIST)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


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
