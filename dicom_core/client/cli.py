"""The bulk-upload command: ``python -m dicom_core upload`` and the ``dicom-lake-upload`` console script."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:7071/v2"

DESCRIPTION = """\
Upload DICOM files to a DICOMweb service (STOW-RS) in batched, concurrent requests.

PATH may be a file, a folder (walked recursively) or a zip archive (its members are read
without extracting). A file is DICOM when it has the Part 10 'DICM' prefix, whatever its
name or extension. Files that are not are reported as failed and never sent.

Requests that get 429 or 503, or that fail to connect, are retried with exponential backoff
(or after the server's Retry-After). The command ends with a summary: how many files were
stored, skipped and failed, and each failed file with its reason (the server's FailureReason
code and message). The exit status is 0 when nothing failed, 1 otherwise, 2 for usage errors."""

EPILOG = """\
examples:
  # a folder and a zip archive, to the local server (python -m dicom_core serve)
  python -m dicom_core upload ~/scans/ct-study/ ~/Downloads/mri.zip

  # into a partition of a deployed service, with a function key
  dicom-lake-upload ./export --url https://myapp.azurewebsites.net/v2 \\
      --partition research --header "x-functions-key: $FUNCTION_KEY"

  # resume an interrupted upload: instances already stored count as skipped
  dicom-lake-upload ./export --skip-existing

  # replace instances that are stored already (HTTP PUT)
  dicom-lake-upload ./corrected --upsert

  # large files on a fast link: fewer, bigger requests, more at once, no progress bar
  dicom-lake-upload /data --batch-size 20 --batch-bytes 256MB --concurrency 8 --quiet

failure reasons in the summary:
  272    processing failure: the storage could not be reached; upload again
  42752  out of resources: the instance is larger than the server accepts
  43264  validation failed: a required attribute is missing or invalid, or the file is truncated
  43265  the StudyInstanceUID differs from the study in the URL
  45070  already stored: use --skip-existing to count it as skipped, or --upsert to replace it
  49152  cannot understand: not a DICOM Part 10 file the server can read"""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?)b?\s*$", re.IGNORECASE)


def byte_size(text: str) -> int:
    """A size such as ``64MB``, ``1.5GiB``, ``500k`` or ``1000000`` in bytes (MB = 10^6, MiB = 2^20)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 64MB, 1GiB or 1000000")
    number, unit = float(match.group(1)), match.group(2).lower()
    base = 1024 if unit.endswith("i") else 1000
    exponent = "kmgt".find(unit[:1]) + 1 if unit else 0
    size = int(number * base**exponent)
    if size < 1:
        raise argparse.ArgumentTypeError("the size must be at least 1 byte")
    return size


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a header such as 'Authorization: Bearer TOKEN'")
    return name.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The upload command's arguments, shared by the subcommand and the console script."""
    parser.add_argument("paths", metavar="PATH", nargs="+", type=Path, help="a DICOM file, a folder or a zip archive")
    target = parser.add_argument_group("where to")
    target.add_argument("--url", default=DEFAULT_URL, help=f"base URL of the DICOMweb service, up to /v2 (default {DEFAULT_URL})")
    target.add_argument(
        "--partition",
        metavar="P",
        help="store into this data partition ({url}/partitions/P/studies); default: the service's default partition",
    )
    target.add_argument(
        "--header",
        metavar="'NAME: VALUE'",
        action="append",
        type=_header,
        default=[],
        help="an extra request header, e.g. 'Authorization: Bearer TOKEN' or 'x-functions-key: KEY' (repeatable)",
    )
    existing = parser.add_argument_group("instances already stored").add_mutually_exclusive_group()
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="count instances the server already has (FailureReason 45070) as skipped instead of failed; "
        "makes a re-run of an interrupted upload finish with exit status 0",
    )
    existing.add_argument("--upsert", action="store_true", help="replace instances that are already stored (HTTP PUT)")
    tuning = parser.add_argument_group("requests")
    tuning.add_argument(
        "--batch-size", type=_whole_number(1), default=50, metavar="N", help="most instances in one request (default 50)"
    )
    tuning.add_argument(
        "--batch-bytes",
        type=byte_size,
        default=byte_size("64MB"),
        metavar="SIZE",
        help="most bytes in one request, e.g. 64MB or 1GiB (default 64MB); a larger file goes alone",
    )
    tuning.add_argument(
        "--concurrency", type=_whole_number(1), default=4, metavar="N", help="requests in flight at once (default 4)"
    )
    tuning.add_argument(
        "--retries",
        type=_whole_number(0),
        default=5,
        metavar="N",
        help="retries of a request after 429, 503 or a connection error (default 5)",
    )
    tuning.add_argument(
        "--backoff",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="wait before the first retry when the server sends no Retry-After; it doubles with each retry, "
        "with jitter, up to 5 minutes (default 1)",
    )
    tuning.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the server to read or answer a request (default 300)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (it is also hidden when stderr is not a terminal)"
    )


def run(arguments: argparse.Namespace) -> int:
    """Upload, print the summary on stdout, and return the exit status."""
    from dicom_core.client.upload import UploadOptions, upload

    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # it logs every oddity of a header it reads
    options = UploadOptions(
        url=arguments.url,
        partition=arguments.partition,
        upsert=arguments.upsert,
        skip_existing=arguments.skip_existing,
        batch_size=arguments.batch_size,
        batch_bytes=arguments.batch_bytes,
        concurrency=arguments.concurrency,
        retries=arguments.retries,
        first_backoff=arguments.backoff,
        timeout=arguments.timeout,
        headers=dict(arguments.header),
        progress=not arguments.quiet and sys.stderr.isatty(),
    )
    report = upload(arguments.paths, options)
    print(report.summary(), flush=True)
    return 1 if report.failed else 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``upload`` to the subcommands of ``python -m dicom_core``."""
    parser = commands.add_parser(
        "upload",
        help="upload DICOM files, folders and zip archives (STOW-RS)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def main(argv: list[str] | None = None) -> int:
    """The ``dicom-lake-upload`` console script."""
    parser = argparse.ArgumentParser(
        prog="dicom-lake-upload",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
