"""Command line: ``python -m dicom_core serve`` (and later commands)."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import sys
from pathlib import Path

from dicom_core.client import cli as upload_cli
from dicom_core.local import azurite
from dicom_core.local.lifetime import configure_logging

AZURITE_DATA = azurite.REPOSITORY_ROOT / ".azurite"
AZURITE_DEFAULT_PORTS = (10000, 10001, 10002)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _lake_configured() -> bool:
    return any(name == "DicomLake" or name.startswith("DicomLake__") for name in os.environ)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # uvicorn shuts down on SIGTERM and then raises the signal again for the handler that was
    # installed before it: this one, so the process exits through ``finally`` blocks (which
    # stop the emulator) instead of being killed by the default action.
    raise SystemExit(128 + signum)


def serve(arguments: argparse.Namespace) -> int:
    """Serve the route table with uvicorn; start Azurite first when no lake is configured.

    The settings are read once, here, and handed to the app: the emulator's connection
    string goes into them directly, never through the process environment.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from dicom_core.http.app import create_app
    from dicom_core.http.local_server import uvicorn_options, worker_app
    from dicom_core.settings import Settings

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    environment: dict[str, str] = dict(os.environ)
    emulator = None
    try:
        if not _lake_configured():
            ports = AZURITE_DEFAULT_PORTS if all(map(_port_free, AZURITE_DEFAULT_PORTS)) else (None, None, None)
            emulator = azurite.start(
                arguments.azurite_data,
                blob_port=ports[0],
                queue_port=ports[1],
                table_port=ports[2],
                log_file=arguments.azurite_data / "azurite.log",
            )
            environment["DicomLake"] = emulator.connection_string
            print(
                f"Azurite started (blob port {emulator.blob_port}, table port {emulator.table_port}, "
                f"data in {arguments.azurite_data})",
                flush=True,
            )
        settings = Settings.from_environment(environment)
        print(f"DICOMweb service at http://{arguments.host}:{arguments.port}/v2", flush=True)
        options = {
            "host": arguments.host,
            "port": arguments.port,
            "log_level": arguments.log_level,
            "timeout_graceful_shutdown": 5,
            **uvicorn_options(settings.limits),
        }
        if arguments.workers == 1:
            uvicorn.run(create_app(settings), **options)
        else:
            # uvicorn.run takes only an import string with workers, which would leave the
            # workers to read the settings from the environment; a factory bound to these
            # settings travels to each spawned worker with the configuration instead.
            app_of_worker = functools.partial(worker_app, settings, os.getpid())
            config = uvicorn.Config(app_of_worker, factory=True, workers=arguments.workers, **options)
            Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        if emulator is not None:
            emulator.stop()
    return 0


def reindex(arguments: argparse.Namespace) -> int:
    """Run operations.reconcile.reindex with a progress bar (files, MB/s, ETA) and print a summary."""
    import asyncio

    from tqdm import tqdm

    from dicom_core.operations.reconcile import contract_files
    from dicom_core.operations.reconcile import reindex as reindex_lake
    from dicom_core.services import Services
    from dicom_core.settings import Settings

    async def run() -> int:
        services = await Services.open(Settings.from_environment())
        try:
            files = await contract_files(services, arguments.partition)
            total = sum(file.size for file in files)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="reindex") as bar:
                done = 0

                def advance(result) -> None:
                    nonlocal done
                    done += 1
                    bar.set_postfix_str(f"{done}/{len(files)} files", refresh=False)
                    bar.update(result.size)

                summary = await reindex_lake(services, files, arguments.partition, advance)
        finally:
            await services.close()
        counts = summary.counts
        print(
            f"reindex: {len(files)} files; added {counts['added']}, refreshed {counts['refreshed']}, "
            f"removed {counts['removed']} entries without a file, finished {summary.deletes_finished} interrupted "
            f"deletes, recounted {summary.studies_recounted} studies, removed {summary.originals_removed} originals of "
            f"instances no longer stored, unchanged {counts['unchanged']}, "
            f"rejected {len(summary.rejected)}, failed {len(summary.failed)}"
        )
        for path, reason in summary.rejected:
            print(f"  rejected {path}: {reason}")
        return 1 if summary.failed else 0

    return asyncio.run(run())


def check(arguments: argparse.Namespace) -> int:
    """Print every violation of the archive's invariants (operations/check.py); non-zero when there is one."""
    import asyncio

    from dicom_core.operations.check import check as check_archive
    from dicom_core.services import Services
    from dicom_core.settings import Settings

    async def run() -> int:
        services = await Services.open(Settings.from_environment())
        try:
            violations = await check_archive(services)
        finally:
            await services.close()
        for violation in violations:
            print(violation)
        print(f"check: {len(violations)} violation(s)" + ("; `python -m dicom_core reindex` repairs them" if violations else ""))
        return 1 if violations else 0

    return asyncio.run(run())


def analytics(arguments: argparse.Namespace) -> int:
    """``analytics sync``, ``rebuild`` or ``maintain``: the analytics Delta tables by hand, with a progress bar."""
    import asyncio

    from tqdm import tqdm

    from dicom_core.operations import analytics as tables
    from dicom_core.services import Services
    from dicom_core.settings import Settings

    async def run() -> int:
        services = await Services.open(Settings.from_environment())
        try:
            if arguments.action == "maintain":
                compacted = await tables.maintain(services)
                if compacted is None:
                    print("analytics maintain: another host holds the lease (it is syncing now); try again")
                    return 1
                print(f"analytics maintain: compacted (files before) {compacted}; vacuumed")
                return 0
            if arguments.action == "rebuild":
                operation, total, unit = tables.rebuild, await tables.count_instances(services), "instances"
            else:
                operation, total, unit = tables.sync, await tables.pending_changes(services), "changes"
            with tqdm(total=total, unit=f" {unit}", desc=f"analytics {arguments.action}") as bar:
                result = await operation(services, batch_size=arguments.batch_size, progress=bar.update)
        finally:
            await services.close()
        if result.busy:
            print("analytics: another host holds the lease (it is syncing now); try again in a minute")
            return 1
        rows = ", ".join(f"{count} {name} rows" for name, count in result.rows.items()) or "no rows"
        print(f"analytics {arguments.action}: {result.entries} {unit} applied ({rows}); current to change {result.position}")
        return 0

    return asyncio.run(run())


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
            "Settings come from the environment (docs/settings.md). When DicomLake is not set, Azurite "
            "is started from node_modules with its data in .azurite/, and stopped on Ctrl-C."
        ),
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, default=7071, help="port to listen on (default 7071, as func start)")
    serve_parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve_parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes (default 1); each serves whole requests, so more use more cores for concurrent clients",
    )
    serve_parser.add_argument(
        "--azurite-data", type=Path, default=AZURITE_DATA, help="folder for Azurite's data (default .azurite/)"
    )
    serve_parser.set_defaults(run=serve)
    reindex_parser = commands.add_parser(
        "reindex",
        help="rebuild or repair the index from the lake (bulk import)",
        description=(
            "Walk the lake's contract folders and bring the index in line: index files copied in with any "
            "storage tool, refresh changed ones, reject files whose UIDs differ from their path, drop entries "
            "whose file is gone, and finish interrupted deletes. Idempotent: run it again to resume. "
            "Settings come from the environment (DicomLake, DicomIndex, ...)."
        ),
    )
    reindex_parser.add_argument("--partition", help="only this partition (default: all)")
    reindex_parser.set_defaults(run=reindex)
    check_parser = commands.add_parser(
        "check",
        help="verify the archive's invariants (lake, index, change feed)",
        description=(
            "Read the lake, the index and the change feed and report every violation of the invariants in "
            "docs/reliability.md, one line each with its path; exit 1 when there is any. Read-only."
        ),
    )
    check_parser.set_defaults(run=check)
    analytics_parser = commands.add_parser(
        "analytics",
        help="sync, rebuild or maintain the analytics Delta tables in the lake",
        description=(
            "The Delta tables under AHDS/{workspace}/dicom/{service}/analytics/ (docs/analytics.md). "
            "sync: apply the change feed since the last sync (the timer does this every minute); "
            "rebuild: recreate the tables from the index; maintain: compact small files and vacuum old versions."
        ),
    )
    analytics_parser.add_argument("action", choices=["sync", "rebuild", "maintain"])
    analytics_parser.add_argument("--batch-size", type=int, help="feed entries (rebuild: instances) per Delta commit")
    analytics_parser.set_defaults(run=analytics)
    upload_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    arguments = build_parser().parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
