"""Content negotiation (PS3.18 8.7): which of the media types we can produce the client accepts."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_core.errors import NotAcceptable
from dicom_core.http.multipart import MediaType


@dataclass(frozen=True)
class AcceptedType:
    media_type: MediaType
    quality: float

    def matches(self, type_name: str) -> bool:
        wanted = self.media_type.type
        if wanted in ("*/*", "*"):
            return True
        if wanted.endswith("/*"):
            return type_name.split("/")[0] == wanted[:-2]
        return wanted == type_name


def parse_accept(header: str | None) -> list[AcceptedType]:
    """The entries of an Accept header, best first; an absent header accepts anything."""
    if not header or not header.strip():
        return [AcceptedType(MediaType("*/*", {}), 1.0)]
    entries = []
    for position, raw in enumerate(_split_outside_quotes(header)):
        if not raw.strip():
            continue
        media_type = MediaType.parse(raw)
        try:
            quality = float(media_type.parameters.pop("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0:
            entries.append((-quality, position, AcceptedType(media_type, quality)))
    return [entry for _, _, entry in sorted(entries, key=lambda item: (item[0], item[1]))]


def _split_outside_quotes(header: str) -> list[str]:
    parts, current, quoted = [], [], False
    for character in header:
        if character == '"':
            quoted = not quoted
        if character == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    return parts


def choose(header: str | None, offered: list[str]) -> str:
    """The first of ``offered`` that the Accept header allows, best quality first; 406 when none."""
    for accepted in parse_accept(header):
        for type_name in offered:
            if accepted.matches(type_name):
                return type_name
    raise NotAcceptable(f"the Accept header allows none of the media types this resource offers: {', '.join(offered)}")
