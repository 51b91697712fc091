"""Content negotiation (PS3.18 8.7): which of the representations a resource offers the client accepts.

Every route declares what it can produce as a list of ``Offer``s, best first, and calls
``negotiate`` once; the Accept header's entries are tried best quality first (RFC 9110
12.5.1), and the first offer an entry allows wins. An entry allows an offer when its
media type is the offer's or a wildcard of it (``*/*``, ``*``, ``type/*``) and, for
multipart offers, its ``type`` parameter names the offer's part type or a wildcard of it.
The chosen transfer syntax is the entry's ``transfer-syntax`` parameter, else the offer's
default (PS3.18 8.7.3.5.2). Nothing allowed is a 406 that lists the offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicom_core.errors import NotAcceptable
from dicom_core.http.media_types import MULTIPART_RELATED, MediaType

_ANY = ("*/*", "*")


@dataclass(frozen=True)
class Offer:
    """One representation of a resource.

    ``part_type``: for multipart/related, the media type of each part. ``syntaxes``: the
    transfer syntaxes the client may ask for (None: any; the operation refuses those it
    cannot produce, saying why). ``default_syntax``: the one used when the client names
    none; ``wildcard_syntax``, when it reached this offer only through a wildcard.
    ``takes_syntax`` False: the representation has no transfer-syntax parameter.
    """

    media_type: str
    part_type: str | None = None
    syntaxes: frozenset[str] | None = None
    default_syntax: str | None = None
    wildcard_syntax: str | None = None
    takes_syntax: bool = True

    def describe(self) -> str:
        text = self.media_type
        if self.part_type:
            text += f'; type="{self.part_type}"'
        if self.syntaxes:
            text += f" (transfer-syntax={' or '.join(sorted(self.syntaxes))})"
        return text


@dataclass(frozen=True)
class Choice:
    """The offer negotiated and the transfer syntax asked for (None for representations without one)."""

    offer: Offer
    transfer_syntax: str | None

    @property
    def media_type(self) -> str:
        return self.offer.media_type


@dataclass(frozen=True)
class AcceptedType:
    media_type: MediaType
    quality: float


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


def _covers(wanted: str, offered: str) -> tuple[bool, bool]:
    """(whether media range ``wanted`` covers ``offered``, whether only as a wildcard)."""
    if wanted in _ANY:
        return True, True
    if wanted.endswith("/*"):
        return offered.split("/")[0] == wanted[:-2], True
    return wanted == offered, False


def _allows(accepted: AcceptedType, offer: Offer) -> tuple[bool, bool]:
    """(whether the Accept entry allows ``offer``, whether only through a wildcard)."""
    covered, wildcard = _covers(accepted.media_type.type, offer.media_type)
    if not covered:
        return False, False
    parameters = accepted.media_type.parameters
    if offer.part_type is not None and not wildcard:
        part_covered, part_wildcard = _covers(parameters.get("type", offer.part_type).lower(), offer.part_type)
        if not part_covered:
            return False, False
        wildcard = part_wildcard
    requested = parameters.get("transfer-syntax")
    if offer.takes_syntax and offer.syntaxes is not None and requested is not None and requested.strip() not in offer.syntaxes:
        return False, False
    return True, wildcard


def negotiate(header: str | None, offers: Sequence[Offer]) -> Choice:
    """The first offer the Accept header allows, best quality first; NotAcceptable when none."""
    for accepted in parse_accept(header):
        for offer in offers:
            allowed, wildcard = _allows(accepted, offer)
            if not allowed:
                continue
            if not offer.takes_syntax:
                return Choice(offer, offer.default_syntax)
            requested = accepted.media_type.parameters.get("transfer-syntax")
            default = offer.wildcard_syntax if wildcard and offer.wildcard_syntax else offer.default_syntax
            return Choice(offer, requested.strip() if requested is not None else default)
    listed = ", ".join(offer.describe() for offer in offers)
    raise NotAcceptable(f"the Accept header allows none of the media types this resource offers: {listed}")


def choose(header: str | None, offered: Sequence[str]) -> str:
    """The first of ``offered`` (plain media types) that the Accept header allows."""
    return negotiate(header, [Offer(media_type, takes_syntax=False) for media_type in offered]).media_type


def multipart_offer(part_type: str, **options) -> Offer:
    """An offer of ``multipart/related`` with parts of ``part_type``."""
    return Offer(MULTIPART_RELATED, part_type=part_type, **options)
