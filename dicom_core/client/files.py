"""Find the DICOM instances to upload: files, folders (recursively) and zip archives.

A file is DICOM when it has the Part 10 prefix, 'DICM' after the 128-byte
preamble (PS3.10 7.1), whatever its name. A file without it is read as a zip
archive when it is one, and each member is judged the same way; anything else is
rejected here, without being sent. Each instance's SOP Instance UID is read
client-side (header only) so that the server's per-instance outcomes can be
matched to the files they came from.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import pydicom

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
NOT_DICOM = "not a DICOM Part 10 file (no 'DICM' after the 128-byte preamble)"


@dataclass(frozen=True)
class Candidate:
    """A file or zip member that starts like a Part 10 file."""

    label: str  # how the summary names it: the path, or "archive.zip!member"
    size: int
    open: Callable[[], BinaryIO]


@dataclass(frozen=True)
class Instance:
    """A candidate whose header could be read: ready to send."""

    label: str
    size: int
    open: Callable[[], BinaryIO]
    sop_instance_uid: str  # "" when the header has none (the server will refuse it)


@dataclass(frozen=True)
class Rejected:
    """A file that is not sent, and why."""

    label: str
    size: int
    reason: str


def _has_magic(stream: BinaryIO) -> bool:
    head = stream.read(PREAMBLE_LENGTH + len(MAGIC))
    return head[PREAMBLE_LENGTH:] == MAGIC


def discover(paths: Iterable[Path], archives: contextlib.ExitStack) -> Iterator[Candidate | Rejected]:
    """Every file under ``paths``, in a stable order, as a candidate instance or a rejection.

    Folders are walked recursively (sorted, symbolic links to folders not followed);
    zip archives stay open on ``archives`` until the caller closes it.
    """
    for path in paths:
        if path.is_dir():
            for folder, subfolders, names in os.walk(path):
                subfolders.sort()
                for name in sorted(names):
                    yield from _file(Path(folder) / name, archives)
        elif path.exists():
            yield from _file(path, archives)
        else:
            yield Rejected(str(path), 0, "no such file or folder")


def _file(path: Path, archives: contextlib.ExitStack) -> Iterator[Candidate | Rejected]:
    label = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            is_dicom = _has_magic(stream)
        if is_dicom:
            yield Candidate(label, size, partial(open, path, "rb"))
            return
        if not zipfile.is_zipfile(path):
            yield Rejected(label, size, f"{NOT_DICOM} and not a zip archive")
            return
        archive = archives.enter_context(zipfile.ZipFile(path))
    except (OSError, zipfile.BadZipFile) as error:
        yield Rejected(label, 0, f"cannot be read: {error}")
        return
    yield from _members(archive, label)


def _members(archive: zipfile.ZipFile, archive_label: str) -> Iterator[Candidate | Rejected]:
    for member in archive.infolist():
        if member.is_dir():
            continue
        label = f"{archive_label}!{member.filename}"
        try:
            with archive.open(member) as stream:
                is_dicom = _has_magic(stream)
        except (OSError, zipfile.BadZipFile, RuntimeError) as error:  # RuntimeError: an encrypted member
            yield Rejected(label, member.file_size, f"cannot be read from the archive: {error}")
            continue
        if is_dicom:
            # ZipFile serialises reads of its members, so several threads may read them at once.
            yield Candidate(label, member.file_size, partial(archive.open, member))
        else:
            yield Rejected(label, member.file_size, NOT_DICOM)


def read_instance(candidate: Candidate) -> Instance | Rejected:
    """Read the candidate's header (never its pixel data) for its SOP Instance UID."""
    try:
        # pydicom warns about every oddity it reads past; the server judges the file, not these warnings.
        with candidate.open() as stream, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(stream, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception as error:  # pydicom raises many types on damaged input
        return Rejected(candidate.label, candidate.size, f"not a DICOM Part 10 file pydicom can read: {error}")
    uid = str(dataset.get("SOPInstanceUID", "") or "").strip()
    return Instance(candidate.label, candidate.size, candidate.open, uid)
