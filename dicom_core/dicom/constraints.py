"""Matching rules of PS3.4 C.2.2.2: one constraint per matching key, tested against stored DICOM JSON.

A constraint answers one question, ``matches(element)``, for the element a stored study,
series or instance has for its key. The QIDO-RS parser (dicom/query.py) builds them; how
the index finds their candidates is the lookup table's business (storage/lookup_plan.py).
Pure functions: no storage, no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_core.dicom.levels import MatchingKey
from dicom_core.dicom.matching import (
    Interval,
    name_words,
    person_name_groups,
    person_name_whole,
    temporal_point,
    wildcard_match,
)


def element_values(element: dict | None) -> list:
    """The values of a DICOM JSON element (PS3.18 F.2.2), none when absent or empty."""
    return list(element.get("Value") or []) if element else []


@dataclass(frozen=True)
class UidList:
    """List of UID matching (PS3.4 C.2.2.2.2): any of the UIDs."""

    key: MatchingKey
    uids: tuple[str, ...]

    def matches(self, element: dict | None) -> bool:
        return any(str(value) in self.uids for value in element_values(element))


@dataclass(frozen=True)
class TextMatch:
    """Single value or wildcard matching of text (PS3.4 C.2.2.2.1, C.2.2.2.4), case-sensitive; CS keys take a list."""

    key: MatchingKey
    patterns: tuple[str, ...]

    def matches(self, element: dict | None) -> bool:
        return any(self.accepts(str(value).strip()) for value in element_values(element))

    def accepts(self, value: str) -> bool:
        return any(wildcard_match(pattern, value) for pattern in self.patterns)


@dataclass(frozen=True)
class NameMatch:
    """Person names (PS3.4 C.2.2.2.1, C.2.2.2.4), case- and accent-insensitive.

    A value matches when one of its groups (alphabetic, ideographic, phonetic) matches the
    pattern; a pattern holding ``=`` is matched against all groups as ``A=I=P``. With
    fuzzy matching every word of the pattern must begin a word of the name.
    """

    key: MatchingKey
    pattern: str  # normalized
    fuzzy: bool

    @property
    def words(self) -> list[str]:
        return name_words(self.pattern)

    def matches(self, element: dict | None) -> bool:
        return any(self._matches_value(value) for value in element_values(element))

    def _matches_value(self, value: dict | str) -> bool:
        if self.fuzzy:
            stored = [word for group in person_name_groups(value) for word in name_words(group)]
            return all(any(wildcard_match(f"{word}*", candidate) for candidate in stored) for word in self.words)
        if "=" in self.pattern:
            return wildcard_match(self.pattern, person_name_whole(value))
        return any(wildcard_match(self.pattern, group) for group in person_name_groups(value))


@dataclass(frozen=True)
class TemporalMatch:
    """Single value or range matching of DA, TM and DT (PS3.4 C.2.2.2.5)."""

    key: MatchingKey
    interval: Interval
    open_ended: bool

    def matches(self, element: dict | None) -> bool:
        points = (temporal_point(self.key.vr, str(value)) for value in element_values(element))
        return any(point is not None and self.interval.contains(point) for point in points)


@dataclass(frozen=True)
class IntegerMatch:
    """Single value matching of IS values, as numbers (``007`` matches 7)."""

    key: MatchingKey
    number: int

    def matches(self, element: dict | None) -> bool:
        for value in element_values(element):
            try:
                if int(value) == self.number:
                    return True
            except (TypeError, ValueError):
                continue
        return False


@dataclass(frozen=True)
class NumberMatch:
    """Single value or range matching of numbers (DS, FD, FL, SL, SS, UL, US): ``low`` to ``high``, inclusive.

    PS3.4 C.2.2.2.5 defines ranges for dates and times only; the service extends them to
    the numeric VRs of extended query tags, as a range of their values.
    """

    key: MatchingKey
    low: float | None
    high: float | None

    def matches(self, element: dict | None) -> bool:
        for value in element_values(element):
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if (self.low is None or number >= self.low) and (self.high is None or number <= self.high):
                return True
        return False


Constraint = UidList | TextMatch | NameMatch | TemporalMatch | IntegerMatch | NumberMatch
