"""Extended query tags: which attributes can become matching keys, and their values in an instance.

The Azure DICOM service's v2 API lets a client add matching keys beyond the standard ones
(``POST /v2/extendedquerytags``). This module decides what a declaration may be and what
an instance's value of a declared tag is:

- ``declaration`` checks one item of the request body (path, VR, private creator, level)
  and raises ``InvalidTagDeclaration`` saying why it cannot be indexed;
- ``tag_value`` finds a declared tag's element in an instance's DICOM JSON (PS3.18 F.2),
  checks its values against the declared VR (PS3.5 6.2) and returns it with that VR, or
  the reason it does not fit (an error of the tag, as Azure records them).

Pure functions: no storage, no HTTP.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicom_core.dicom.levels import KEYS_BY_NAME, Level, MatchingKey
from dicom_core.dicom.matching import parse_integer, temporal_point
from dicom_core.dicom.uids import uid_problem

MAX_TAGS = 128  # the Azure DICOM service's limit of extended query tags
# The VRs the Azure service indexes, and DS, which it dropped and imaging teams ask for (SliceThickness).
INDEXABLE_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "PN", "SH", "SL", "SS", "TM", "UI", "UL", "US"}
)
INTEGER_VRS = frozenset({"SL", "SS", "UL", "US"})
FLOAT_VRS = frozenset({"DS", "FD", "FL"})
LEVELS = {"Study": Level.STUDY, "Series": Level.SERIES, "Instance": Level.INSTANCE}

# PS3.5 6.2: the longest value of each fixed-repertoire text VR.
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "DS": 16, "IS": 12, "UI": 64}
_INTEGER_RANGES = {"SS": (-(2**15), 2**15 - 1), "US": (0, 2**16 - 1), "SL": (-(2**31), 2**31 - 1), "UL": (0, 2**32 - 1)}
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_AGE = re.compile(r"\d{3}[DWMY]")
_CODE = re.compile(r"[A-Z0-9 _]*")


class InvalidTagDeclaration(ValueError):
    """A declaration the service cannot index; ``message`` says why (a 400)."""


@dataclass(frozen=True)
class TagDeclaration:
    """One extended query tag as declared: its tag, VR, private creator (private tags only) and level."""

    tag: int
    vr: str
    private_creator: str | None
    level: Level

    @property
    def path(self) -> str:
        return f"{self.tag:08X}"

    @property
    def private(self) -> bool:
        return bool((self.tag >> 16) % 2)

    def matching_key(self) -> MatchingKey:
        """The matching key of the tag: found by its keyword or its tag, indexed under ``x.{tag}``."""
        keyword = keyword_for_tag(self.tag) if not self.private else ""
        return MatchingKey(keyword or self.path, self.tag, self.vr, self.level, extended=True)


def _tag_of(path: object) -> int:
    if not isinstance(path, str) or not path.strip():
        raise InvalidTagDeclaration("path is missing: give a tag (8 hexadecimal digits, e.g. 00181030) or a keyword")
    text = path.strip()
    if "." in text:
        raise InvalidTagDeclaration(f"path {text[:80]!r} is inside a sequence; only top-level attributes can be indexed")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return int(text, 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise InvalidTagDeclaration(f"path {text[:80]!r} is neither a tag (8 hexadecimal digits) nor a DICOM keyword")
    return tag


def declaration(item: object) -> TagDeclaration:
    """The declaration of one item of a POST /v2/extendedquerytags body; raises InvalidTagDeclaration."""
    if not isinstance(item, dict):
        raise InvalidTagDeclaration("each item must be an object with path, vr, privateCreator and level")
    unknown = set(item) - {"path", "vr", "privateCreator", "level"}
    if unknown:
        raise InvalidTagDeclaration(f"unknown field {sorted(unknown)[0][:40]!r}; an item has path, vr, privateCreator, level")
    tag = _tag_of(item.get("path"))
    path = f"{tag:08X}"
    group, element = tag >> 16, tag & 0xFFFF
    if KEYS_BY_NAME.get(path) is not None:
        raise InvalidTagDeclaration(f"{KEYS_BY_NAME[path].keyword} ({path}) is a standard matching key already")
    private = bool(group % 2)
    creator = item.get("privateCreator")
    if creator is not None and (not isinstance(creator, str) or not creator.strip() or len(creator) > 64 or "\\" in creator):
        raise InvalidTagDeclaration(f"{path}: privateCreator must be a text of 1 to 64 characters (LO)")
    if private:
        if group <= 0x0007 or group == 0xFFFF:
            raise InvalidTagDeclaration(f"{path}: groups 0001-0007 and FFFF cannot hold private attributes")
        if element < 0x1000:
            raise InvalidTagDeclaration(f"{path} is not a private data element: give gggg,xxyy with xx from 10 to FF")
        if not creator:
            raise InvalidTagDeclaration(f"{path} is a private tag: give its privateCreator")
    elif creator:
        raise InvalidTagDeclaration(f"{path} is a standard attribute: it takes no privateCreator")
    elif group == 0x0000 or group == 0x0002:
        raise InvalidTagDeclaration(f"{path}: command and file meta attributes are not part of the data set")
    vr = item.get("vr")
    if vr is not None and not isinstance(vr, str):
        raise InvalidTagDeclaration(f"{path}: vr must be a two-letter text")
    vr = vr.strip().upper() if vr else None
    if not private:
        try:
            known = dictionary_VR(tag)
        except KeyError:
            raise InvalidTagDeclaration(f"{path} is not an attribute of the DICOM dictionary") from None
        if vr is not None and vr not in known.split(" or "):
            raise InvalidTagDeclaration(f"{path} has VR {known} in the DICOM dictionary, not {vr}")
        vr = vr or known
    if vr is None:
        raise InvalidTagDeclaration(f"{path} is a private tag: give its vr")
    if vr not in INDEXABLE_VRS:
        raise InvalidTagDeclaration(f"{path}: VR {vr[:8]} cannot be indexed; supported: {', '.join(sorted(INDEXABLE_VRS))}")
    level = item.get("level")
    if level not in LEVELS:
        raise InvalidTagDeclaration(f"{path}: level must be one of Study, Series, Instance, got {str(level)[:40]!r}")
    return TagDeclaration(tag, vr, creator.strip() if creator else None, LEVELS[level])


# -- values of an instance -------------------------------------------------------------------------


@dataclass(frozen=True)
class TagValue:
    """A declared tag in one instance: its element under the declared VR, or why its value does not fit."""

    element: dict | None
    problem: str | None = None


def tag_value(declared: TagDeclaration, model: dict) -> TagValue:
    """The element of ``declared`` in an instance's DICOM JSON ``model``; absent or empty is no value, not an error.

    A private tag counts only when its block is reserved by the declared private creator
    (PS3.5 7.8.1). An element read without its VR (implicit VR: UN, PS3.5 6.2.2) is decoded
    with the declared one.
    """
    element = model.get(declared.path)
    if element is None:
        return TagValue(None)
    if declared.private:
        creator_tag = f"{(declared.tag >> 16):04X}00{(declared.tag >> 8) & 0xFF:02X}"
        creators = _values(model.get(creator_tag), "LO")
        if not creators or str(creators[0]).strip() != declared.private_creator:
            return TagValue(None)
    try:
        values = _values(element, declared.vr)
        for value in values:
            _check(declared.vr, value)
    except ValueError as error:
        return TagValue(None, f"{declared.path} ({declared.vr}): {error}")
    return TagValue({"vr": declared.vr, "Value": values} if values else None)


def _values(element: dict | None, vr: str) -> list:
    """The values of ``element``; an UN element's bytes decoded as ``vr``."""
    if not element:
        return []
    if "Value" in element:
        return list(element["Value"])
    if "InlineBinary" not in element:
        return []
    data = base64.b64decode(element["InlineBinary"])
    if vr in _BINARY_FORMATS:
        size = struct.calcsize(_BINARY_FORMATS[vr])
        if len(data) % size:
            raise ValueError(f"{len(data)} bytes are not a whole number of {vr} values")
        return list(struct.unpack(f"<{len(data) // size}{_BINARY_FORMATS[vr]}", data))
    text = data.decode("latin-1").rstrip("\x00 ")
    if vr == "PN":
        return [{"Alphabetic": name} for name in text.split("\\")]
    return text.split("\\") if text else []


def _check(vr: str, value: object) -> None:
    """ValueError saying why ``value`` is not a valid ``vr`` value (PS3.5 6.2)."""
    if vr in ("DA", "TM", "DT"):
        if temporal_point(vr, str(value)) is None:
            raise ValueError(f"{str(value)[:40]!r} is not a valid {vr} value")
    elif vr == "AS":
        if not _AGE.fullmatch(str(value)):
            raise ValueError(f"{str(value)[:40]!r} is not an age (nnnD, nnnW, nnnM or nnnY)")
    elif vr == "UI":
        if problem := uid_problem(str(value)):
            raise ValueError(f"{str(value)[:80]!r} is not a valid UID: {problem}")
    elif vr == "IS":
        parse_integer(str(value))
    elif vr in INTEGER_VRS:
        low, high = _INTEGER_RANGES[vr]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{str(value)[:40]!r} is not a {vr} value ({low} to {high})")
    elif vr in FLOAT_VRS:
        number = parse_number(str(value))
        if vr == "DS" and len(str(value).strip()) > _MAX_LENGTH["DS"] and isinstance(value, str):
            raise ValueError(f"{str(value)[:40]!r} is longer than 16 characters")
        if not math.isfinite(number):
            raise ValueError(f"{str(value)[:40]!r} is not a finite number")
    elif vr == "PN":
        groups = list(value.values()) if isinstance(value, dict) else [str(value)]
        if any(len(group) > 64 for group in groups):
            raise ValueError("a person name group is longer than 64 characters")
    else:
        text = str(value)
        if len(text) > _MAX_LENGTH.get(vr, 64):
            raise ValueError(f"{text[:40]!r} is longer than {_MAX_LENGTH[vr]} characters")
        if vr == "CS" and not _CODE.fullmatch(text):
            raise ValueError(f"{text[:40]!r} holds characters a code string cannot (A-Z, 0-9, space, _)")
        if any(character < " " for character in text):
            raise ValueError("the value holds control characters")


def parse_number(text: str) -> float:
    """A decimal number (DS, FD, FL) of a stored value or a query; ValueError when it is not one."""
    stripped = text.strip()
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", stripped):
        raise ValueError(f"{text[:40]!r} is not a number")
    return float(stripped)
