"""QIDO-RS against the local server (started as the README's run command starts it).

Property tests: hypothesis draws queries over a generated corpus and the server's answer
must equal a plain in-memory reference implementation of the matching rules, written here
independently of dicom_core. Then dicomweb-client's search methods, paging included.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

import httpx
import pytest
from dicomweb_client import DICOMwebClient
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dicom_files import multipart, new_instance, stow_headers
from tests.environments import isolated_settings
from tests.server import running_server

NAMES = ["Müller^Jürgen", "Muller^Anna", "Núñez^María^José", "Dupont^Jean-Loup^^Dr.", "Åström^Åsa", "Smith^John", "O'Brien^Seán"]
MODALITIES = ["CT", "MR", "PT", "XA"]
DESCRIPTIONS = ["AXIAL", "AX T1", "SAG T2", "LOCALIZER"]


@dataclass(frozen=True)
class Record:
    """What the reference implementation knows of one stored instance."""

    study: str
    series: str
    sop: str
    patient_id: str
    name: str
    date: str
    modality: str
    description: str
    number: int


def _corpus(seed: int = 7) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for study_number in range(14):
        study = f"1.2.826.0.1.3680043.8.498.7.{study_number + 1}"
        patient = rng.randrange(8)
        name, date = NAMES[patient % len(NAMES)], f"200{rng.randrange(4)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        for series_number in range(rng.randrange(1, 4)):
            series = f"{study}.{series_number + 1}"
            modality, description = rng.choice(MODALITIES), rng.choice(DESCRIPTIONS)
            for number in range(1, rng.randrange(2, 4)):
                records.append(
                    Record(study, series, f"{series}.{number}", f"PID{patient}", name, date, modality, description, number)
                )
    return records


CORPUS = _corpus()


@pytest.fixture(scope="module")
def server(azurite_server, tmp_path_factory):
    """The server over a fresh archive holding CORPUS; yields its /v2 URL."""
    configured = isolated_settings(azurite_server.connection_string)
    with running_server(configured, tmp_path_factory.mktemp("server") / "server.log") as (url, _):
        instances = [
            new_instance(
                study=r.study, series=r.series, sop=r.sop, patient_id=r.patient_id, modality=r.modality,
                PatientName=r.name, StudyDate=r.date, SeriesDescription=r.description, InstanceNumber=r.number,
                SpecificCharacterSet="ISO_IR 192",
            )
            for r in CORPUS
        ]  # fmt: skip
        body, boundary = multipart(instances)
        response = httpx.post(f"{url}/studies", content=body, headers=stow_headers(boundary), timeout=120)
        assert response.status_code == 200, response.text
        yield url


# -- the reference implementation ----------------------------------------------------------------------


def plain(name: str) -> str:
    without_marks = "".join(c for c in unicodedata.normalize("NFD", name) if unicodedata.category(c) != "Mn")
    return without_marks.upper()


def like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def reference_match(record: Record, key: str, value: str, fuzzy: bool) -> bool:
    if key == "PatientID":
        return like(value, record.patient_id)
    if key == "PatientName" and fuzzy:
        words = [w for w in re.split(r"[\^\s=-]+", plain(record.name)) if w]
        return all(any(like(q + "*", w) for w in words) for q in re.split(r"[\^\s=-]+", plain(value)) if q)
    if key == "PatientName":
        return like(plain(value).rstrip("^"), plain(record.name).rstrip("^"))
    if key == "StudyDate":
        low, _, high = value.partition("-") if "-" in value else (value, "", value)
        return (low or "00000000") <= record.date <= (high or "99999999")
    if key == "Modality":
        return any(like(v, record.modality) for v in value.split(","))
    if key == "SeriesDescription":
        return like(value, record.description)
    if key == "InstanceNumber":
        return record.number == int(value)
    raise AssertionError(key)


LEVELS = {"studies": ("0020000D", "study"), "series": ("0020000E", "series"), "instances": ("00080018", "sop")}
KEY_LEVEL = {"PatientID": 0, "PatientName": 0, "StudyDate": 0, "Modality": 1, "SeriesDescription": 1, "InstanceNumber": 2}


def _wildcarded(text: str, draw) -> str:
    """``text`` with a few characters turned into wildcards, or cut and ended with ``*``."""
    characters = list(text)
    for position in draw(st.lists(st.integers(0, max(len(text) - 1, 0)), max_size=2)):
        if characters:
            characters[position] = draw(st.sampled_from("*?"))
    if draw(st.booleans()):
        characters = [*characters[: draw(st.integers(0, len(characters)))], "*"]
    return "".join(characters)


@st.composite
def queries(draw) -> tuple[str, dict[str, str], bool]:
    resource = draw(st.sampled_from(sorted(LEVELS)))
    depth = list(LEVELS).index(resource)
    params: dict[str, str] = {}
    fuzzy = draw(st.booleans())
    for key in draw(st.lists(st.sampled_from([k for k, level in KEY_LEVEL.items() if level <= depth]), max_size=2, unique=True)):
        record = draw(st.sampled_from(CORPUS))
        if key == "StudyDate":
            low, high = sorted(draw(st.sampled_from(CORPUS)).date for _ in range(2))
            params[key] = draw(st.sampled_from([low, f"{low}-{high}", f"{low}-", f"-{high}"]))
        elif key == "InstanceNumber":
            params[key] = str(draw(st.integers(1, 3)))
        elif key == "Modality":
            params[key] = ",".join(draw(st.lists(st.sampled_from([*MODALITIES, "C?", "*T"]), min_size=1, max_size=2)))
        elif key == "PatientName" and fuzzy:
            words = [w for w in re.split(r"[\^ -]+", record.name) if w]
            params[key] = " ".join(
                w[: draw(st.integers(1, len(w)))] for w in draw(st.lists(st.sampled_from(words), min_size=1, max_size=2))
            )
        else:
            text = {"PatientID": record.patient_id, "PatientName": record.name, "SeriesDescription": record.description}[key]
            text = text.lower() if key == "PatientName" and draw(st.booleans()) else text
            params[key] = _wildcarded(text, draw)
    return resource, params, fuzzy


@given(queries())
@settings(max_examples=80, deadline=None)
def test_answers_equal_the_reference_implementation(server, query):
    resource, params, fuzzy = query
    tag, field = LEVELS[resource]
    response = httpx.get(
        f"{server}/{resource}", params={**params, "fuzzymatching": str(fuzzy).lower(), "limit": "1000"}, timeout=30
    )
    assert response.status_code == 200, response.text
    answered = sorted(match[tag]["Value"][0] for match in response.json())
    expected = sorted(
        {getattr(r, field) for r in CORPUS if all(reference_match(r, key, value, fuzzy) for key, value in params.items())}
    )
    assert answered == expected


def test_dicomweb_client_searches_and_pages(server):
    client = DICOMwebClient(server)
    studies = client.search_for_studies(search_filters={"PatientName": "muller*"}, get_remaining=True)
    expected = {r.study for r in CORPUS if plain(r.name).startswith("MULLER")}
    assert {s["0020000D"]["Value"][0] for s in studies} == expected
    assert all(s["00201208"]["Value"][0] == sum(r.study == s["0020000D"]["Value"][0] for r in CORPUS) for s in studies)
    # Paging: get_remaining walks offset with pages of 4 until an empty page.
    everything = client.search_for_instances(limit=4, get_remaining=True)
    assert sorted(i["00080018"]["Value"][0] for i in everything) == sorted(r.sop for r in CORPUS)
    series = client.search_for_series(search_filters={"Modality": "MR"}, limit=2, get_remaining=True, fields=["PatientID"])
    assert {s["0020000E"]["Value"][0] for s in series} == {r.series for r in CORPUS if r.modality == "MR"}
    assert all("00100020" in s for s in series)
    study = CORPUS[0].study
    in_study = client.search_for_series(study_instance_uid=study, get_remaining=True)
    assert {s["0020000E"]["Value"][0] for s in in_study} == {r.series for r in CORPUS if r.study == study}
    first = CORPUS[0]
    of_series = client.search_for_instances(study_instance_uid=first.study, series_instance_uid=first.series, get_remaining=True)
    assert {i["00080018"]["Value"][0] for i in of_series} == {r.sop for r in CORPUS if r.series == first.series}
    fuzzy = client.search_for_studies(search_filters={"PatientName": "jur"}, fuzzymatching=True)
    assert {s["0020000D"]["Value"][0] for s in fuzzy} == {r.study for r in CORPUS if "Jürgen" in r.name}
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []
