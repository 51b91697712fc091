"""QIDO-RS matching of one value against stored values (PS3.4 C.2.2.2, PS3.18 8.3.4): pure functions.

Everything here works on normalized text, the same text the lookup table keys on
(docs/index-design.md), so what the index finds and what verification accepts agree:

- person names: accents stripped, upper case (``Åström^Åsa`` → ``ASTROM^ASA``); a name is
  matched group by group (alphabetic, ideographic, phonetic) and, with fuzzy matching,
  word by word (the words of all components);
- other text: leading and trailing spaces are not significant, case is (PS3.4 C.2.2.2.1);
- dates, times and date-times: fixed-width text whose order is the order of time, so a
  range of values is a range of text;
- numbers: fixed-width text in numeric order (``integer_key``, ``float_key``).
"""

from __future__ import annotations

import re
import struct
import unicodedata
from dataclasses import dataclass
from datetime import date
from functools import cache

WILDCARDS = "*?"

# Letters that carry no combining mark to strip, spelled the way a keyboard without them would.
_SPECIAL_LETTERS = str.maketrans({"Ø": "O", "Æ": "AE", "Œ": "OE", "Ł": "L", "Đ": "D", "Þ": "TH", "Ð": "D", "ẞ": "SS"})
_WORD_SEPARATORS = re.compile(r"[\^=\s-]+")


def normalize_name(text: str) -> str:
    """A person name (or part of one) for case- and accent-insensitive comparison."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(character for character in decomposed if not unicodedata.combining(character))
    return stripped.upper().translate(_SPECIAL_LETTERS).strip()


def name_words(normalized: str) -> list[str]:
    """The words of a normalized name: its components split further at spaces and hyphens."""
    return list(dict.fromkeys(word for word in _WORD_SEPARATORS.split(normalized) if word))


def person_name_groups(value: dict | str) -> list[str]:
    """The normalized groups (alphabetic, ideographic, phonetic) of one PN value of DICOM JSON."""
    if isinstance(value, str):
        groups = value.split("=")
    else:
        groups = [value.get(name, "") for name in ("Alphabetic", "Ideographic", "Phonetic")]
    return [name for name in (normalize_name(group).rstrip("^") for group in groups) if name]


def person_name_whole(value: dict | str) -> str:
    """All groups of one PN value as ``A=I=P`` (normalized), for a query that itself holds ``=``."""
    if isinstance(value, str):
        groups = value.split("=")
    else:
        groups = [value.get(name, "") for name in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(normalize_name(group).rstrip("^") for group in groups).rstrip("=")


def has_wildcard(pattern: str) -> bool:
    return any(character in pattern for character in WILDCARDS)


def literal_prefix(pattern: str) -> str:
    """The text before the first wildcard: every match starts with it."""
    for position, character in enumerate(pattern):
        if character in WILDCARDS:
            return pattern[:position]
    return pattern


@cache
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    parts = (".*" if character == "*" else "." if character == "?" else re.escape(character) for character in pattern)
    return re.compile("".join(parts), re.DOTALL)


def wildcard_match(pattern: str, value: str) -> bool:
    """PS3.4 C.2.2.2.4: ``*`` matches any sequence of characters (also none), ``?`` any one character."""
    return _wildcard_regex(pattern).fullmatch(value) is not None


# -- dates, times, date-times --------------------------------------------------------------------

# Each temporal VR as fixed-width text: the earliest and the latest value of every position,
# so that a partial value (a time to the hour, a date-time to the day) becomes the interval it
# stands for by padding with the one or the other.
_TEMPORAL_LOW = {"DA": "00000101", "TM": "000000.000000", "DT": "00000101000000.000000"}
_TEMPORAL_HIGH = {"DA": "99991231", "TM": "235959.999999", "DT": "99991231235959.999999"}
_TEMPORAL_SHAPE = {
    "DA": re.compile(r"\d{8}"),
    "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?"),
}
_TEMPORAL_EXAMPLE = {"DA": "YYYYMMDD", "TM": "HH, HHMM, HHMMSS or HHMMSS.FFFFFF", "DT": "YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]]"}


@dataclass(frozen=True)
class Interval:
    """An inclusive range of normalized temporal text."""

    low: str
    high: str

    def contains(self, point: str) -> bool:
        return self.low <= point <= self.high


def _check_temporal(vr: str, text: str) -> str:
    """``text`` when it is a valid value of ``vr``; otherwise ValueError saying why."""
    if not _TEMPORAL_SHAPE[vr].fullmatch(text):
        if vr == "DT" and "+" in text:
            raise ValueError(f"{text!r} carries a time zone offset, which date-time queries do not support")
        raise ValueError(f"{text!r} is not a valid {vr} value ({_TEMPORAL_EXAMPLE[vr]})")
    if vr in ("DA", "DT") and len(text) >= 8:
        try:
            date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            raise ValueError(f"{text!r} is not a calendar date") from None
    time = text if vr == "TM" else text[8:]
    hours, minutes, seconds = time[0:2], time[2:4], time[4:6]
    if (hours and int(hours) > 23) or (minutes and int(minutes) > 59) or (seconds and int(seconds) > 60):
        raise ValueError(f"{text!r} is not a valid time of day")
    return text


def temporal_point(vr: str, text: str) -> str | None:
    """A stored DA/TM/DT value as normalized text (its earliest instant); None when it is not valid."""
    text = text.strip()
    if vr == "DT":
        text = re.split(r"[+-]", text, maxsplit=1)[0]  # stored offsets are not compared (docs/search.md, "Matching rules")
    try:
        _check_temporal(vr, text)
    except ValueError:
        return None
    return text + _TEMPORAL_LOW[vr][len(text) :]


def temporal_interval(vr: str, text: str) -> Interval:
    """A query value of VR DA, TM or DT: one value, ``a-b``, ``a-`` or ``-b`` (PS3.4 C.2.2.2.5).

    A partial value stands for the whole interval it names: ``10`` as a time is 10:00:00 to
    10:59:59.999999, ``2004`` as a date-time the whole year. Raises ValueError saying why a value
    is malformed.
    """
    if text.count("-") > 1:
        raise ValueError(f"{text!r} is not a value or a range a-b, a- or -b")
    low_text, separator, high_text = text.partition("-")
    if not separator:
        high_text = low_text
    if not low_text and not high_text:
        raise ValueError("a range needs at least one end")
    low = _check_temporal(vr, low_text) + _TEMPORAL_LOW[vr][len(low_text) :] if low_text else _TEMPORAL_LOW[vr]
    high = _check_temporal(vr, high_text) + _TEMPORAL_HIGH[vr][len(high_text) :] if high_text else _TEMPORAL_HIGH[vr]
    if low > high:
        raise ValueError(f"the range {text!r} starts after it ends")
    return Interval(low, high)


# -- integers ---------------------------------------------------------------------------------------

_INTEGER_OFFSET = 10**12  # IS values have at most 12 characters, so |n| < 10**12


def integer_key(number: int) -> str:
    """An IS value as fixed-width text in numeric order (negative numbers included)."""
    return f"{number + _INTEGER_OFFSET:013d}"


def parse_integer(text: str) -> int:
    """A query value of VR IS; ValueError saying why when it is not an integer."""
    stripped = text.strip()
    if not re.fullmatch(r"[+-]?\d{1,12}", stripped) or abs(int(stripped)) >= _INTEGER_OFFSET:
        raise ValueError(f"{text!r} is not an integer (IS, at most 12 characters)")
    return int(stripped)


def float_key(number: float) -> str:
    """A decimal or floating-point value (DS, FD, FL) as fixed-width text in numeric order.

    The IEEE 754 double's bits, read as an unsigned integer, sort like the numbers once the
    sign bit is set for non-negative values and every bit is flipped for negative ones.
    """
    (bits,) = struct.unpack(">Q", struct.pack(">d", float(number) + 0.0))  # + 0.0: -0.0 is 0.0
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | 1 << 63
    return f"{bits:016X}"
