"""Upload files, folders and zip archives to a DICOMweb service in batched, concurrent STOW-RS requests.

The files are found first (sizes only, so the progress bar knows the total);
then each instance's header is read for its SOP Instance UID and the instances
are grouped into batches (by count and bytes; never two with the same UID in a
batch, so every outcome maps back to one file) that ``concurrency`` threads
send at once, each retrying 429, 503 and connection errors with exponential
backoff (or the server's Retry-After). The result is a :class:`Report`.

"Already stored" (FailureReason 45070) counts as skipped with ``skip_existing``:
the server itself refuses the duplicate, so no lookup beforehand is needed for
a re-run to be correct.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential_jitter
from tqdm import tqdm

from dicom_core.client.files import Candidate, Instance, Rejected, discover, read_instance
from dicom_core.client.stow import ALREADY_STORED, MultipartBody, Outcome, outcomes

RETRY_STATUSES = frozenset({429, 503})
LONGEST_WAIT = 300.0  # seconds; a longer Retry-After is shortened to this


@dataclass(frozen=True)
class UploadOptions:
    """How to upload; the defaults are the CLI's."""

    url: str  # the service's base URL, up to /v2, e.g. http://127.0.0.1:7071/v2
    partition: str | None = None
    upsert: bool = False  # PUT: replace instances that are already stored
    skip_existing: bool = False  # count "already stored" (45070) as skipped, not failed
    batch_size: int = 50  # most instances in one request
    batch_bytes: int = 64 * 1000 * 1000  # most bytes in one request (a larger single file goes alone)
    concurrency: int = 4  # requests in flight at once
    retries: int = 5  # retries of one request after 429, 503 or a connection error
    timeout: float = 300.0  # seconds to wait for the server to read or answer a request
    headers: dict[str, str] = field(default_factory=dict)  # extra request headers, e.g. authorization
    progress: bool = False  # show a progress bar on stderr
    first_backoff: float = 1.0  # seconds before the first retry when the server gives no Retry-After

    @property
    def studies_url(self) -> str:
        """Where the batches go: {url}/studies or {url}/partitions/{partition}/studies."""
        base = self.url.rstrip("/")
        if self.partition:
            base = f"{base}/partitions/{quote(self.partition, safe='')}"
        return f"{base}/studies"


@dataclass
class Report:
    """What an upload did."""

    url: str
    stored: int = 0
    skipped: int = 0  # already stored, with skip_existing
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    sent_bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """A few lines for the terminal: the counts, then each failed file with its reason."""
        total = self.stored + self.skipped + len(self.failed)
        rate = self.sent_bytes / 1e6 / self.seconds if self.seconds else 0.0
        lines = [
            f"{total} files: {self.stored} stored, {self.skipped} skipped (already stored), {len(self.failed)} failed",
            f"sent {self.sent_bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({rate:.1f} MB/s) to {self.url}",
        ]
        if self.failed:
            lines.append("Failed:")
            lines.extend(f"  {label}: {reason}" for label, reason in sorted(self.failed))
        return "\n".join(lines)


def upload(paths: Iterable[Path], options: UploadOptions) -> Report:
    """Upload every DICOM file found under ``paths``; see the module docstring."""
    started = time.monotonic()
    report = Report(options.studies_url)
    with contextlib.ExitStack() as archives:
        found = list(discover(paths, archives))
        progress = _Progress(sum(item.size for item in found), len(found), options.progress)
        timeout = httpx.Timeout(options.timeout, connect=30.0)
        limits = httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency)
        with (
            progress,
            httpx.Client(timeout=timeout, limits=limits, headers=options.headers) as client,
            ThreadPoolExecutor(options.concurrency, thread_name_prefix="stow") as pool,
        ):
            sender = _BatchSender(options, client, progress, report)
            # Back-pressure: read headers and build batches only a little ahead of the senders.
            slots = threading.BoundedSemaphore(2 * options.concurrency)
            futures: list[Future] = []
            for batch in _batches(found, options, sender.reject):
                slots.acquire()
                future = pool.submit(sender.send, batch)
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)
            for future in futures:
                future.result()  # re-raise anything unexpected
    report.seconds = time.monotonic() - started
    return report


def _batches(
    found: Iterable[Candidate | Rejected], options: UploadOptions, reject: Callable[[Rejected], None]
) -> Iterator[list[Instance]]:
    """Group the readable instances into batches; hand each unreadable file to ``reject``."""
    batch: list[Instance] = []
    size = 0
    uids: set[str] = set()
    for item in found:
        instance = read_instance(item) if isinstance(item, Candidate) else item
        if isinstance(instance, Rejected):
            reject(instance)
            continue
        full = len(batch) >= options.batch_size or size + instance.size > options.batch_bytes
        if batch and (full or instance.sop_instance_uid in uids):
            yield batch
            batch, size, uids = [], 0, set()
        batch.append(instance)
        size += instance.size
        if instance.sop_instance_uid:
            uids.add(instance.sop_instance_uid)
    if batch:
        yield batch


class _Progress:
    """A thread-safe tqdm bar in bytes (so it shows MB/s and the ETA) with the count of files done."""

    def __init__(self, total_bytes: int, total_files: int, enabled: bool) -> None:
        self._lock = threading.Lock()
        self._files_done = 0
        self._total_files = total_files
        self._bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            desc="Uploading",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not enabled,
        )
        self._bar.set_postfix_str(f"0/{total_files} files", refresh=False)

    def advance(self, byte_count: int) -> None:
        """Count bytes sent (negative: take back the bytes of an attempt that will be retried)."""
        with self._lock:
            self._bar.update(byte_count)

    def files_done(self, count: int) -> None:
        with self._lock:
            self._files_done += count
            self._bar.set_postfix_str(f"{self._files_done}/{self._total_files} files", refresh=False)

    def note(self, text: str) -> None:
        """A line above the bar (nothing when the bar is hidden)."""
        if not self._bar.disable:
            with self._lock:
                self._bar.write(text, file=sys.stderr)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()


class _RetryAfterOrBackoff(wait_base):
    """Wait as long as the response's Retry-After says, else exponential backoff with jitter."""

    def __init__(self, backoff: wait_base) -> None:
        self._backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and not outcome.failed:
            seconds = retry_after_seconds(outcome.result().headers.get("retry-after"))
            if seconds is not None:
                return min(seconds, LONGEST_WAIT)
        return self._backoff(retry_state)


def retry_after_seconds(value: str | None) -> float | None:
    """The delay a Retry-After header asks for (delta-seconds or an HTTP date), None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _BatchSender:
    """Sends batches (from several threads) and records each file's outcome in the report."""

    def __init__(self, options: UploadOptions, client: httpx.Client, progress: _Progress, report: Report) -> None:
        self._options = options
        self._client = client
        self._progress = progress
        self._report = report
        self._lock = threading.Lock()

    def reject(self, rejected: Rejected) -> None:
        """A file that is not sent: it fails with the reason found client-side."""
        with self._lock:
            self._report.failed.append((rejected.label, rejected.reason))
        self._progress.advance(rejected.size)
        self._progress.files_done(1)

    def send(self, batch: Sequence[Instance]) -> None:
        """One STOW-RS request with retries; then record the outcome of each instance."""
        total = sum(instance.size for instance in batch)
        kept = 0  # bytes of the attempt whose answer counts
        attempts = 0

        def attempt() -> httpx.Response:
            nonlocal kept, attempts
            attempts += 1
            sent = 0

            def count(byte_count: int) -> None:
                nonlocal sent
                sent += byte_count
                self._progress.advance(byte_count)

            body = MultipartBody(batch, count)
            headers = {"Content-Type": body.content_type, "Content-Length": str(body.length), "Accept": "application/dicom+json"}
            try:
                response = self._client.request(self._method, self._options.studies_url, content=body, headers=headers)
            except httpx.TransportError:
                self._progress.advance(-sent)
                raise
            if response.status_code in RETRY_STATUSES:
                self._progress.advance(-sent)
            else:
                kept = sent
            return response

        try:
            response = self._retrying(len(batch))(attempt)
            results = outcomes(batch, response)
        except (httpx.HTTPError, OSError) as error:
            after = f" (after {attempts} attempts)" if attempts > 1 else ""
            results = [Outcome(False, message=f"the request failed{after}: {type(error).__name__}: {error}")] * len(batch)
        else:
            if response.status_code in RETRY_STATUSES and attempts > 1:
                results = [Outcome(False, message=f"{result.message} (after {attempts} attempts)") for result in results]
        self._progress.advance(total - kept)
        self._progress.files_done(len(batch))
        self._record(batch, results, kept)

    @property
    def _method(self) -> str:
        return "PUT" if self._options.upsert else "POST"

    def _retrying(self, batch_length: int) -> Retrying:
        def announce(retry_state: RetryCallState) -> None:
            outcome = retry_state.outcome
            if outcome is None:
                return
            if outcome.failed:
                error = outcome.exception()
                cause = f"{type(error).__name__}: {str(error).rstrip('.')}"
            else:
                cause = f"HTTP {outcome.result().status_code}"
            wait = retry_state.upcoming_sleep
            self._progress.note(f"{cause}; retrying a batch of {batch_length} in {wait:.1f} s")

        return Retrying(
            stop=stop_after_attempt(self._options.retries + 1),
            wait=_RetryAfterOrBackoff(wait_exponential_jitter(initial=self._options.first_backoff, max=LONGEST_WAIT)),
            retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(lambda r: r.status_code in RETRY_STATUSES),
            before_sleep=announce,
            # When every attempt is used up: the last response, or the last exception raised.
            retry_error_callback=lambda retry_state: retry_state.outcome.result(),
        )

    def _record(self, batch: Sequence[Instance], results: Sequence[Outcome], sent_bytes: int) -> None:
        with self._lock:
            self._report.sent_bytes += sent_bytes
            for instance, result in zip(batch, results, strict=True):
                if result.stored:
                    self._report.stored += 1
                elif result.failure_reason == ALREADY_STORED and self._options.skip_existing:
                    self._report.skipped += 1
                else:
                    self._report.failed.append((instance.label, result.describe()))
