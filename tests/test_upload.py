"""The bulk-upload CLI (``python -m dicom_core upload``) against the local server started as the README starts it."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import import_module
from pathlib import Path

import httpx
import pydicom
import pytest

from dicom_core.local.azurite import REPOSITORY_ROOT
from dicom_core.storage.lake import FileMissing
from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import minimal_instance, new_instance, preamble_zeroed, storable_test_files
from tests.server import running_server

DEFAULT_PARTITION = "Microsoft.Default"


def run_cli(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m dicom_core upload ARGUMENTS`` as a user runs it; stdout and stderr captured (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "dicom_core", "upload", *map(str, arguments)],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def key_of(data: bytes, partition: str = DEFAULT_PARTITION) -> InstanceKey:
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return InstanceKey(partition, dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)


def failure_lines(stdout: str) -> dict[str, str]:
    """The summary's failed files: {file: reason}."""
    lines = stdout.split("Failed:\n", 1)[1].splitlines() if "Failed:\n" in stdout else []
    return dict(line.strip().split(": ", 1) for line in lines)


async def assert_stored(services, files: dict[str, bytes], partition: str = DEFAULT_PARTITION) -> None:
    """Each file is in the lake at its contract path, as sent with the preamble zeroed."""
    for data in files.values():
        stored = await services.lake.read(services.layout.instance_path(key_of(data, partition)))
        assert stored == preamble_zeroed(data)


def valid_test_files(count: int) -> list[Path]:
    """Small storable pydicom test files with distinct SOP Instance UIDs (several files share UIDs)."""
    chosen, uids = [], set()
    for path in storable_test_files():
        if path.stat().st_size > 300_000:
            continue
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        if uid not in uids:
            uids.add(uid)
            chosen.append(path)
    return chosen[:count]


@dataclass
class Corpus:
    root: Path
    valid: dict[str, bytes] = field(default_factory=dict)  # summary label -> bytes, for files that must be stored
    broken: dict[str, str] = field(default_factory=dict)  # summary label -> text its reason must contain

    def add(self, relative: str, data: bytes) -> str:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)


def truncated_instance() -> bytes:
    """A Part 10 file cut off inside its pixel data: its header (and SOP UID) reads fine client-side."""
    return new_instance()[:-1000]


def build_mixed_corpus(root: Path) -> Corpus:
    """pydicom test files in nested folders, a file without extension, a zip archive, and broken files."""
    corpus = Corpus(root)
    for number, path in enumerate(valid_test_files(6)):
        data = path.read_bytes()
        corpus.valid[corpus.add(f"scans/series{number % 2}/{path.name}", data)] = data
    no_extension = new_instance()
    corpus.valid[corpus.add("scans/IM0001", no_extension)] = no_extension
    corpus.broken[corpus.add("notes.txt", b"just some notes\n" * 20)] = "not a DICOM Part 10 file"
    corpus.broken[corpus.add("broken/x_no_patient.dcm", minimal_instance(PatientID=None))] = "43264 validation failed: PatientID"
    corpus.broken[corpus.add("broken/truncated.dcm", truncated_instance())] = "43264 validation failed"

    archive = root / "archive.zip"
    members = {"series/one.dcm": new_instance(), "series/truncated.dcm": truncated_instance(), "series/two": new_instance()}
    members["readme.txt"] = b"not an image"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as writer:
        for name, data in members.items():
            writer.writestr(name, data)
    corpus.valid[f"{archive}!series/one.dcm"] = members["series/one.dcm"]
    corpus.valid[f"{archive}!series/two"] = members["series/two"]
    corpus.broken[f"{archive}!series/truncated.dcm"] = "43264 validation failed"
    corpus.broken[f"{archive}!readme.txt"] = "not a DICOM Part 10 file"
    return corpus


async def test_upload_stores_folders_and_zips_and_lists_each_failed_file_with_its_reason(settings, services, tmp_path):
    corpus = build_mixed_corpus(tmp_path / "corpus")
    with running_server(settings, tmp_path / "server.log") as (url, _):
        result = run_cli(corpus.root, "--url", url)

    assert result.returncode == 1, result.stdout + result.stderr
    total = len(corpus.valid) + len(corpus.broken)
    assert f"{total} files: {len(corpus.valid)} stored, 0 skipped (already stored), {len(corpus.broken)} failed" in result.stdout
    failures = failure_lines(result.stdout)
    assert set(failures) == set(corpus.broken)
    for label, reason in corpus.broken.items():
        assert reason in failures[label], (label, failures[label])
    # The server reports validation failures without UIDs: they are matched to files in part order
    # (zip!series/truncated.dcm, broken/truncated.dcm, broken/x_no_patient.dcm), so the PatientID
    # message must land on the file that lacks it and on no other.
    lacking = str(corpus.root / "broken/x_no_patient.dcm")
    assert [label for label, reason in failures.items() if "PatientID" in reason] == [lacking]
    assert "Uploading" not in result.stderr  # no progress bar when stderr is not a terminal
    await assert_stored(services, corpus.valid)


async def test_second_run_reports_duplicates_skips_them_when_asked_and_upsert_replaces(settings, services, tmp_path):
    folder = tmp_path / "study"
    files = {str(folder / path.name): path.read_bytes() for path in valid_test_files(4)}
    for label, data in files.items():
        Path(label).parent.mkdir(exist_ok=True)
        Path(label).write_bytes(data)
    with running_server(settings, tmp_path / "server.log") as (url, _):
        first = run_cli(folder, "--url", url)
        again = run_cli(folder, "--url", url)
        skipping = run_cli(folder, "--url", url, "--skip-existing")
        # The same UIDs with new content: --upsert (PUT) replaces what is stored.
        changed = {}
        for label, data in files.items():
            dataset = pydicom.dcmread(io.BytesIO(data))
            dataset.PatientName = "Upserted^Patient"
            buffer = io.BytesIO()
            dataset.save_as(buffer)
            changed[label] = buffer.getvalue()
            Path(label).write_bytes(changed[label])
        upserting = run_cli(folder, "--url", url, "--upsert")

    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 files: 4 stored, 0 skipped (already stored), 0 failed" in first.stdout

    assert again.returncode == 1
    assert "0 stored, 0 skipped (already stored), 4 failed" in again.stdout
    failures = failure_lines(again.stdout)
    assert set(failures) == set(files)
    assert all(reason.startswith("45070 already stored: ") for reason in failures.values())

    assert skipping.returncode == 0, skipping.stdout
    assert "4 files: 0 stored, 4 skipped (already stored), 0 failed" in skipping.stdout
    assert "Failed:" not in skipping.stdout

    assert upserting.returncode == 0, upserting.stdout
    assert "4 files: 4 stored, 0 skipped (already stored), 0 failed" in upserting.stdout
    await assert_stored(services, changed)


async def test_partition_option_stores_into_that_partition_in_concurrent_batches(settings, services, tmp_path):
    folder = tmp_path / "export"
    files = {}
    for number in range(7):
        data = new_instance()
        path = folder / f"{number:02d}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        files[str(path)] = data
    with running_server(settings, tmp_path / "server.log") as (url, _):
        result = run_cli(folder, "--url", url, "--partition", "research", "--batch-size", "2", "--concurrency", "3")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 files: 7 stored" in result.stdout
    assert f"{url}/partitions/research/studies" in result.stdout
    await assert_stored(services, files, partition="research")
    with pytest.raises(FileMissing):
        await services.lake.properties(services.layout.instance_path(key_of(next(iter(files.values())))))


class _StubHandler(BaseHTTPRequestHandler):
    """Answers the first requests as ``server.plan`` says, then forwards to the real service."""

    server: _StubServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.attempts += 1
            action = self.server.plan.pop(0) if self.server.plan else "forward"
        if action == "drop":  # a connection error: close without answering
            self.close_connection = True
            return
        if action != "forward":
            self._answer(int(action), "application/json", json.dumps({"status": int(action), "message": "busy"}).encode())
            return
        upstream = httpx.post(
            self.server.upstream + self.path,
            content=body,
            headers={"Content-Type": self.headers["Content-Type"], "Accept": self.headers["Accept"]},
            timeout=60,
        )
        self._answer(upstream.status_code, upstream.headers["content-type"], upstream.content)

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        if status in (429, 503):
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _StubServer(ThreadingHTTPServer):
    def __init__(self, upstream: str, plan: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.upstream = upstream  # scheme and host of the real service
        self.plan = plan
        self.attempts = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v2"


@contextmanager
def stub_in_front_of(url: str, plan: list[str]) -> Iterator[_StubServer]:
    """A stub server in front of the service at ``url`` (…/v2) that misbehaves as ``plan`` says first."""
    stub = _StubServer(url.removesuffix("/v2"), plan)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.shutdown()
        stub.server_close()


async def test_retries_503_and_429_after_retry_after_and_connection_errors_with_backoff(settings, services, tmp_path):
    data = new_instance()
    path = tmp_path / "one.dcm"
    path.write_bytes(data)
    dropped = new_instance()
    dropped_path = tmp_path / "dropped" / "two.dcm"
    dropped_path.parent.mkdir()
    dropped_path.write_bytes(dropped)
    with running_server(settings, tmp_path / "server.log") as (url, _):
        with stub_in_front_of(url, ["503", "429"]) as stub:
            started = time.monotonic()
            # --backoff 60: only honouring Retry-After: 0 makes this quick.
            result = run_cli(path, "--url", stub.url, "--backoff", "60")
            elapsed = time.monotonic() - started
        with stub_in_front_of(url, ["drop"]) as dropping:
            after_drop = run_cli(dropped_path, "--url", dropping.url, "--backoff", "0.1")

    assert result.returncode == 0, result.stdout + result.stderr
    assert stub.attempts == 3
    assert elapsed < 30
    assert "1 files: 1 stored" in result.stdout
    assert after_drop.returncode == 0, after_drop.stdout + after_drop.stderr
    assert dropping.attempts == 2
    await assert_stored(services, {str(path): data, str(dropped_path): dropped})


def test_gives_up_after_the_retries_and_reports_the_last_answer(tmp_path):
    path = tmp_path / "one.dcm"
    path.write_bytes(new_instance())
    with stub_in_front_of("http://127.0.0.1:9", ["503"] * 10) as stub:
        result = run_cli(path, "--url", stub.url, "--retries", "2")
    assert result.returncode == 1
    assert stub.attempts == 3
    assert failure_lines(result.stdout) == {str(path): "HTTP 503: busy (after 3 attempts)"}


def _run_on_a_terminal(*arguments: str | Path) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; its exit status and what the terminal showed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 rows, 120 columns
    process = subprocess.Popen(
        [sys.executable, "-m", "dicom_core", "upload", *map(str, arguments)],
        cwd=REPOSITORY_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=30), shown.decode(errors="replace")


def test_progress_bar_on_a_terminal_and_not_with_quiet(settings, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for number in range(3):
        (folder / f"{number}.dcm").write_bytes(new_instance())
    with running_server(settings, tmp_path / "server.log") as (url, _):
        status, shown = _run_on_a_terminal(folder, "--url", url)
        quiet_status, quiet_shown = _run_on_a_terminal(folder, "--url", url, "--skip-existing", "--quiet")
    assert status == 0 and quiet_status == 0
    assert "Uploading: 100%" in shown
    assert "3/3 files" in shown
    assert "B/s" in shown
    assert quiet_shown == ""


def test_help_teaches_with_examples_and_the_console_script_is_the_same_command(capsys):
    result = subprocess.run(
        [sys.executable, "-m", "dicom_core", "upload", "--help"], cwd=REPOSITORY_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0
    for text in ("--skip-existing", "--upsert", "--partition", "--batch-bytes", "examples:", "45070", "zip"):
        assert text in result.stdout
    scripts = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["dicom-lake-upload"].split(":")
    with pytest.raises(SystemExit) as exited:
        getattr(import_module(module), function)(["--help"])
    assert exited.value.code == 0
    assert "examples:" in capsys.readouterr().out
