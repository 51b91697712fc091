"""Media types as the HTTP layer reads them from Content-Type and Accept headers (RFC 9110 8.3.1)."""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import parse_options_header

from dicom_core.errors import BadRequest

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
JSON = "application/json"
MULTIPART_RELATED = "multipart/related"
OCTET_STREAM = "application/octet-stream"
ZIP = "application/zip"


@dataclass(frozen=True)
class MediaType:
    """A parsed media type: lower-case type and parameters with lower-case names."""

    type: str
    parameters: dict[str, str]

    @classmethod
    def parse(cls, header: str) -> MediaType:
        try:
            value, options = parse_options_header(header)
            return cls(
                value.decode("latin-1").strip().lower(),
                {name.decode("latin-1").lower(): option.decode("latin-1") for name, option in options.items()},
            )
        except (ValueError, UnicodeError):
            raise BadRequest(f"the Content-Type header {header[:100]!r} cannot be parsed") from None
