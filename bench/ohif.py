"""The OHIF Viewer for the browser test and the benchmark's viewer scenario: served, configured, driven.

The viewer is the built ``dist/`` of the npm package ``@ohif/app`` (fetched by scripts/setup.sh into
``node_modules/.ohif-app``), served by a small static server with an ``app-config.js`` whose one DICOMweb
data source is the server under test. ``bench/ohif.mjs`` drives Debian's Chromium through playwright-core.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
VIEWER_DIST = REPOSITORY_ROOT / "node_modules" / ".ohif-app" / "dist"
DRIVER = REPOSITORY_ROOT / "bench" / "ohif.mjs"
CHROMIUM = Path("/usr/bin/chromium")


def app_config(dicomweb_root: str, *, prefetch_series: bool = False) -> str:
    """The viewer's app-config.js: one DICOMweb data source, the service (the README shows the same).

    With ``prefetch_series``, the viewer's study prefetcher reads every image of the displayed series.
    """
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
    if prefetch_series:
        config["studyPrefetcher"] = {"enabled": True, "displaySetsCount": 1, "maxNumPrefetchRequests": 10, "order": "closest"}
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
