"""The header of an instance file in the lake: its bytes up to the Pixel Data element, by ranged reads."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dicom_core.dicom.update import header_end
from dicom_core.storage.lake import Lake, LakeFile

FIRST_READ = 64 * 1024  # a typical header is a few KiB
MAX_HEADER = 64 * 1024 * 1024


class HeaderTooLarge(Exception):
    """No Pixel Data element within MAX_HEADER bytes."""


@dataclass(frozen=True)
class FileHeader:
    """The file's bytes up to Pixel Data (all of it when it has none, or its data set is deflated), and the file."""

    data: bytes
    file: LakeFile
    blob_metadata: dict[str, str]


async def read_header(lake: Lake, path: str, ends_before: int | None = None) -> FileHeader:
    """The header of the file at ``path``: one ranged read, more only for a header over FIRST_READ bytes.

    ``ends_before``: an offset the header is known to end before (the first frame's, from the
    index), so that the one read takes the header and nothing of the pixel data.
    """
    length = ends_before or FIRST_READ
    while True:
        data, file, metadata = await lake.head(path, length)
        end = await asyncio.to_thread(header_end, data, file.size)
        if end is not None:
            return FileHeader(data[:end], file, metadata)
        if length >= MAX_HEADER:
            raise HeaderTooLarge(f"{path} has no Pixel Data element within its first {MAX_HEADER} bytes")
        length *= 8
