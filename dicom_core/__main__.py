"""Command line: ``python -m dicom_core serve`` (and later commands)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from dicom_core.local import azurite

AZURITE_DATA = azurite.REPOSITORY_ROOT / ".azurite"
AZURITE_DEFAULT_PORTS = (10000, 10001, 10002)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _lake_configured() -> bool:
    return any(name == "DicomLake" or name.startswith("DicomLake__") for name in os.environ)


def serve(arguments: argparse.Namespace) -> int:
    """Serve the route table with uvicorn; start Azurite first when no lake is configured."""
    import uvicorn

    from dicom_core.http.app import create_app

    emulator = None
    if not _lake_configured():
        ports = AZURITE_DEFAULT_PORTS if all(map(_port_free, AZURITE_DEFAULT_PORTS)) else (None, None, None)
        emulator = azurite.start(
            arguments.azurite_data,
            blob_port=ports[0],
            queue_port=ports[1],
            table_port=ports[2],
            log_file=arguments.azurite_data / "azurite.log",
        )
        os.environ["DICOMLAKE"] = emulator.connection_string
        print(
            f"Azurite started (blob port {emulator.blob_port}, table port {emulator.table_port}, "
            f"data in {arguments.azurite_data})",
            flush=True,
        )
    print(f"DICOMweb service at http://{arguments.host}:{arguments.port}/v2", flush=True)
    try:
        uvicorn.run(
            create_app(),
            host=arguments.host,
            port=arguments.port,
            log_level=arguments.log_level,
            timeout_graceful_shutdown=5,
        )
    finally:
        if emulator is not None:
            emulator.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dicom_core",
        description="A DICOMweb service over an Azure Data Lake, indexed in Azure Table Storage.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="serve the DICOMweb API locally",
        description=(
            "Serve the DICOMweb API (the same route table as the Azure Functions app) with uvicorn. "
            "Settings come from the environment (see the README). When DicomLake is not set, Azurite "
            "is started from node_modules with its data in .azurite/, and stopped on Ctrl-C."
        ),
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, default=7071, help="port to listen on (default 7071, as func start)")
    serve_parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve_parser.add_argument(
        "--azurite-data", type=Path, default=AZURITE_DATA, help="folder for Azurite's data (default .azurite/)"
    )
    serve_parser.set_defaults(run=serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The Azure SDKs log every HTTP request at INFO.
    logging.getLogger("azure").setLevel(logging.WARNING)
    arguments = build_parser().parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
