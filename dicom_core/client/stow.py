"""One STOW-RS request of a batch of instances: the streamed body, and the outcome of each instance.

The body is ``multipart/related; type="application/dicom"`` with one part per
file, streamed from disk (or the zip archive) in chunks, with an exact
Content-Length. The response is the Store Instances Response Module (PS3.18
Annex I) in DICOM JSON; :func:`outcomes` maps its items back to the files.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import httpx

from dicom_core.client.files import Instance

CHUNK_SIZE = 1024 * 1024
ALREADY_STORED = 45070

# FailureReason (0008,1197) codes the service returns (docs/errors.md, "Failure reasons").
FAILURE_REASONS = {
    272: "processing failure",
    42752: "out of resources",
    43264: "validation failed",
    43265: "study UID mismatch",
    45070: "already stored",
    45071: "being created",
    49152: "cannot understand",
}

_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_ERROR_COMMENT = "00000902"


@dataclass(frozen=True)
class Outcome:
    """What became of one instance of a request."""

    stored: bool
    failure_reason: int | None = None  # the FailureReason code, when the server gave one
    message: str = ""  # why it failed, in words

    def describe(self) -> str:
        """The reason as the summary prints it, e.g. "43264 validation failed: PatientID ... is missing"."""
        if self.failure_reason is None:
            return self.message
        meaning = FAILURE_REASONS.get(self.failure_reason, "failure")
        return f"{self.failure_reason} {meaning}: {self.message}" if self.message else f"{self.failure_reason} {meaning}"


class MultipartBody:
    """The streamed multipart/related body of a batch; ``on_bytes`` hears every chunk sent."""

    def __init__(self, instances: Sequence[Instance], on_bytes: Callable[[int], None]) -> None:
        self.instances = instances
        self.boundary = uuid.uuid4().hex
        self._on_bytes = on_bytes
        self._part_header = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._closing = f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    @property
    def length(self) -> int:
        """The exact body length, sent as Content-Length so the server can refuse an oversized body at once."""
        framing = len(self._part_header) + 2  # the CRLF after each part
        return sum(instance.size + framing for instance in self.instances) + len(self._closing)

    def __iter__(self) -> Iterator[bytes]:
        for instance in self.instances:
            yield self._part_header
            with instance.open() as stream:
                remaining = instance.size
                while remaining:
                    chunk = stream.read(min(CHUNK_SIZE, remaining))
                    if not chunk:
                        raise OSError(f"{instance.label} became shorter while it was being sent")
                    remaining -= len(chunk)
                    self._on_bytes(len(chunk))
                    yield chunk
            yield b"\r\n"
        yield self._closing


def outcomes(instances: Sequence[Instance], response: httpx.Response) -> list[Outcome]:
    """The outcome of each instance of the request, in the order of ``instances``.

    The server lists stored instances (ReferencedSOPSequence) and failed ones
    (FailedSOPSequence) each in part order. A failed item names its SOP Instance
    UID when the server could read it; otherwise (a file it could not parse or
    validate) it is anonymous. The batch never holds two instances with the same
    UID, so: an instance whose UID is referenced was stored, one whose UID has a
    failed item failed with it, and the others take the anonymous failed items in
    order. A response that is not a Store Instances Response (413, 415, 500...)
    fails every instance with its status and message.
    """
    module = _response_module(response)
    if module is None:
        failure = Outcome(False, message=f"HTTP {response.status_code}: {_error_message(response)}")
        return [failure] * len(instances)
    referenced = {_uid(item) for item in _items(module, _REFERENCED_SOP_SEQUENCE)}
    named: dict[str, Outcome] = {}
    anonymous: list[Outcome] = []
    for item in _items(module, _FAILED_SOP_SEQUENCE):
        code = _first(item, _FAILURE_REASON)
        failure = Outcome(False, code if isinstance(code, int) else None, str(_first(item, _ERROR_COMMENT) or ""))
        uid = _uid(item)
        if uid:
            named[uid] = failure
        else:
            anonymous.append(failure)
    anonymous.reverse()  # pop() takes them in part order
    result = []
    for instance in instances:
        uid = instance.sop_instance_uid
        if uid and uid in referenced:
            result.append(Outcome(True))
        elif uid and uid in named:
            result.append(named[uid])
        elif anonymous:
            result.append(anonymous.pop())
        else:
            result.append(Outcome(False, message=f"the server's response (HTTP {response.status_code}) does not mention it"))
    return result


def _response_module(response: httpx.Response) -> dict | None:
    if response.status_code not in (200, 202, 409):
        return None
    try:
        module = response.json()
    except ValueError:
        return None
    return module if isinstance(module, dict) else None


def _items(module: dict, tag: str) -> list[dict]:
    return [item for item in (module.get(tag) or {}).get("Value") or [] if isinstance(item, dict)]


def _first(item: dict, tag: str) -> object:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def _uid(item: dict) -> str:
    return str(_first(item, _REFERENCED_SOP_INSTANCE_UID) or "")


def _error_message(response: httpx.Response) -> str:
    """The service's JSON ``message``, or the start of whatever else the response says."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return response.text.strip()[:200] or response.reason_phrase
