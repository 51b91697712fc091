"""The pure parts of QIDO-RS matching: normalization, temporal intervals, key encoding (no storage)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_core.dicom.matching import (
    integer_key,
    name_words,
    normalize_name,
    temporal_interval,
    temporal_point,
    wildcard_match,
)
from dicom_core.storage.lookup import MAX_VALUE_CHARS, encode_value, parse_row_key, row_key_bounds
from dicom_core.storage.lookup_plan import ValueRange


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Müller^Jürgen", "MULLER^JURGEN"),
        ("Åström^Åsa", "ASTROM^ASA"),
        ("Nguyễn^Thị", "NGUYEN^THI"),
        ("Søren^Łukasz", "SOREN^LUKASZ"),
        ("straße", "STRASSE"),
        ("山田^太郎", "山田^太郎"),
    ],
)
def test_names_lose_case_and_accents(text, normalized):
    assert normalize_name(text) == normalized


def test_name_words_split_components_spaces_and_hyphens():
    assert name_words("GARCIA MARQUEZ^JEAN-LOUP^^DR.") == ["GARCIA", "MARQUEZ", "JEAN", "LOUP", "DR."]


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [("AB*", "ABC", True), ("*C", "ABC", True), ("A?C", "ABC", True), ("A?C", "AC", False), ("A.C", "ABC", False),
     ("*", "", True), ("A*B*C", "AxxBxxC", True), ("(A)", "(A)", True)],
)  # fmt: skip
def test_wildcards(pattern, value, expected):
    assert wildcard_match(pattern, value) is expected


@pytest.mark.parametrize(
    ("vr", "query", "low", "high"),
    [
        ("DA", "20040105", "20040105", "20040105"),
        ("DA", "20040105-", "20040105", "99991231"),
        ("DA", "-20040105", "00000101", "20040105"),
        ("TM", "10", "100000.000000", "105959.999999"),
        ("TM", "1030-11", "103000.000000", "115959.999999"),
        ("TM", "103015.5", "103015.500000", "103015.599999"),
        ("DT", "2004", "20040101000000.000000", "20041231235959.999999"),
        ("DT", "200401051030-2004010511", "20040105103000.000000", "20040105115959.999999"),
    ],
)
def test_temporal_queries_are_the_intervals_they_name(vr, query, low, high):
    interval = temporal_interval(vr, query)
    assert (interval.low, interval.high) == (low, high)


@pytest.mark.parametrize(
    ("vr", "query", "why"),
    [("DA", "2004", "not a valid DA"), ("DA", "20040230", "calendar"), ("TM", "2400", "time of day"),
     ("DA", "-", "at least one end"), ("DA", "2004-01-05", "a value or a range"), ("DT", "2004+0100", "offset")],
)  # fmt: skip
def test_malformed_temporal_queries_say_why(vr, query, why):
    with pytest.raises(ValueError, match=why):
        temporal_interval(vr, query)


dates = st.dates(min_value=datetime.date(1000, 1, 1)).map(lambda day: day.strftime("%Y%m%d"))


@given(dates, dates, dates)
@settings(max_examples=200, deadline=None)
def test_a_date_range_holds_exactly_the_dates_between(low, high, value):
    low, high = sorted((low, high))
    assert temporal_interval("DA", f"{low}-{high}").contains(temporal_point("DA", value)) == (low <= value <= high)


@given(st.integers(-(10**11) + 1, 10**11 - 1), st.integers(-(10**11) + 1, 10**11 - 1))
def test_integer_keys_sort_like_numbers(first, second):
    assert (integer_key(first) < integer_key(second)) == (first < second)


@given(st.text(max_size=40), st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_encoding_keeps_prefixes_and_key_rules(prefix, rest):
    encoded = encode_value(prefix + rest)
    assert encoded.startswith(encode_value(prefix))
    assert not any(character in encoded for character in "/\\#?|") and encoded.isascii() and encoded.isprintable()
    low, high = row_key_bounds(ValueRange("prefix", prefix))
    assert low is None or low <= f"{encoded}|1.2" < high
    exact_low, exact_high = row_key_bounds(ValueRange("exact", prefix + rest))
    assert exact_low <= f"{encoded}|1.2|3" < exact_high
    assert parse_row_key(f"{encoded}|1.2|3") == (prefix + rest, False, ("1.2", "3"))


def test_long_values_are_cut_without_splitting_an_escape():
    encoded = encode_value("é" * 400)
    assert len(encoded) <= MAX_VALUE_CHARS and encoded.endswith("%A9")
    assert parse_row_key(f"{encoded}|1.2")[1] is True  # may be cut: verification decides
