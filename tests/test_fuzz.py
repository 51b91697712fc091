"""Property-based fuzzing: the multipart reader, STOW with mutated real DICOM files, the QIDO query parser.

The suite runs a short profile; `bash scripts/fuzz.sh` runs the long one
(HYPOTHESIS_PROFILE=long). Whatever the input: no 5xx, no exception other than
the service's own 4xx errors, and the service keeps storing good instances.
"""

from __future__ import annotations

import io

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_core.errors import DicomServiceError
from dicom_core.http.multipart import read_multipart
from dicom_core.settings import Limits
from tests.dicom_files import file_bytes, multipart, new_instance, stow_headers

SEEDS = [file_bytes(name) for name in ("CT_small.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "rtplan.dcm")]
SMALL_LIMITS = Limits(max_request_bytes=2_000_000, max_instance_bytes=1_000_000, max_parts_per_request=20)
FUZZ_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` with a few byte flips, insertions, deletions, a truncation or bad lengths in its first 2 KiB."""
    result = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "length"]))
        position = draw(st.integers(0, max(min(len(result), 2048) - 1, 0)))
        if kind == "flip" and result:
            result[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            result[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del result[position : position + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del result[draw(st.integers(0, len(result))) :]
        elif kind == "length":  # a huge or undefined length
            result[position : position + 4] = draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x01\x00"])
            )
    return bytes(result)


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str]:
    boundary = draw(st.text(alphabet="abcXYZ019'()+_,-./:=? ", min_size=1, max_size=70)).strip() or "b"
    parts = draw(st.lists(st.binary(max_size=300), max_size=5))
    body, _ = multipart([(draw(st.sampled_from(["application/dicom", "text/plain", ""])), part) for part in parts], boundary)
    body = bytearray(body)
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, max(len(body) - 1, 0)))
        body[position:position] = draw(st.sampled_from([b"\r\n", b"--", boundary.encode(), b"\r\n\r\n", b"-"]))
    if draw(st.booleans()):
        del body[draw(st.integers(0, len(body))) :]
    return bytes(body), boundary


async def _chunks(body: bytes, size: int):
    for start in range(0, len(body), size):
        yield body[start : start + size]


@FUZZ_SETTINGS
@given(body_and_boundary=multipart_bodies(), chunk=st.integers(1, 512))
async def test_multipart_reader_raises_only_client_errors(body_and_boundary, chunk):
    body, boundary = body_and_boundary
    try:
        async for part in read_multipart(_chunks(body, chunk), boundary, SMALL_LIMITS):
            part.file.close()
    except DicomServiceError as error:
        assert 400 <= error.status < 500


@FUZZ_SETTINGS
@given(data=st.sampled_from(SEEDS).flatmap(mutated), chunk=st.sampled_from([7, 100, 65536]))
async def test_mutated_dicom_never_gets_a_5xx(client, data, chunk):
    body, boundary = multipart([data])
    response = await client.post("/v2/studies", content=_chunks(body, chunk), headers=stow_headers(boundary))
    assert response.status_code in (200, 202, 409), response.text
    if response.status_code == 409:
        reasons = [item["00081197"]["Value"][0] for item in response.json()["00081198"]["Value"]]
        assert set(reasons) <= {43264, 49152, 45070, 42752}


async def test_service_still_stores_after_fuzzing(client, services):
    data = new_instance()
    body, boundary = multipart([data])
    response = await client.post("/v2/studies", content=body, headers=stow_headers(boundary))
    assert response.status_code == 200
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert dataset.SOPInstanceUID in response.text


QUERY_KEYS = ["PatientName", "PatientID", "00100020", "StudyDate", "StudyTime", "ModalitiesInStudy", "Modality",
              "StudyInstanceUID", "AccessionNumber", "includefield", "limit", "offset", "fuzzymatching", "SOPClassUID",
              "InstanceNumber", "00081030", "Unknown", "0008", "' or PartitionKey ne '"]  # fmt: skip
QUERY_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
QUERY_VALUES = st.one_of(
    QUERY_TEXT,
    st.sampled_from(
        [
            "*",
            "?",
            "**?*",
            "-",
            "2020-",
            "-2020",
            "20200101-20191231",
            "1.2.3\\1.2",
            "all",
            "0",
            "-1",
            "99999999999999999999",
            "' or PartitionKey ne '",
            "%00",
            "\\",
            ",",
            "^^^==",
        ]
    ),
)


@FUZZ_SETTINGS
@given(
    resource=st.sampled_from(["/v2/studies", "/v2/series", "/v2/instances", "/v2/studies/1.2.3/series"]),
    parameters=st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), QUERY_TEXT), QUERY_VALUES), max_size=5),
)
async def test_query_parser_answers_every_query_string_without_a_5xx(client, resource, parameters):
    response = await client.get(resource, params=parameters)
    assert response.status_code in (200, 204, 400), (parameters, response.text[:300])
    if response.status_code == 400:
        assert response.json()["message"]
    else:
        assert isinstance(response.json() if response.content else [], list)
