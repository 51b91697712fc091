"""Request limits: each is a setting, and exceeding it names it."""

from __future__ import annotations

import asyncio

from dicom_core.settings import Limits, Settings
from tests.dicom_files import multipart, new_instance, stow_headers


async def test_query_string_over_the_limit_is_a_414_naming_it(client, services):
    long_query = "PatientName=" + "A" * 9000
    response = await client.post(f"/v2/studies?{long_query}", content=b"", headers={"Content-Type": "application/dicom"})
    assert response.status_code == 414
    assert "DICOM_MAX_QUERY_BYTES" in response.json()["message"]
    assert not [f async for f in services.lake.list("")]


async def test_query_string_at_the_limit_is_served(client):
    body, boundary = multipart([new_instance()])
    query = "x=" + "a" * (8192 - 2)
    response = await client.post(f"/v2/studies?{query}", content=body, headers=stow_headers(boundary))
    assert response.status_code == 200


async def test_request_timeout_is_a_408_naming_the_setting(client, with_limits, services):
    with_limits(request_timeout_seconds=1)
    body, boundary = multipart([new_instance()])

    async def slow_body():
        yield body[:100]
        await asyncio.sleep(3)
        yield body[100:]

    response = await client.post("/v2/studies", content=slow_body(), headers=stow_headers(boundary))
    assert response.status_code == 408
    assert "DICOM_REQUEST_TIMEOUT_SECONDS" in response.json()["message"]
    assert not [f async for f in services.lake.list("")]


def test_every_limit_is_read_from_its_setting():
    environment = {
        "DICOM_MAX_REQUEST_BYTES": "11",
        "DICOM_MAX_INSTANCE_BYTES": "12",
        "DICOM_MAX_PARTS_PER_REQUEST": "13",
        "DICOM_STORE_CONCURRENCY": "2",
        "DICOM_MAX_ELEMENTS": "14",
        "DICOM_MAX_INFLATED_BYTES": "15",
        "DICOM_MAX_QUERY_BYTES": "16",
        "DICOM_REQUEST_TIMEOUT_SECONDS": "17",
        "DICOM_MAX_SEARCH_RESULTS": "18",
        "DICOM_MAX_FRAMES_PER_REQUEST": "19",
        "DICOM_MAX_RENDERED_PIXELS": "20",
        "DICOM_MAX_HEADER_BYTES": "21",
    }
    limits = Settings.from_environment(environment).limits
    assert (
        limits.max_request_bytes,
        limits.max_instance_bytes,
        limits.max_parts_per_request,
        limits.store_concurrency,
        limits.max_elements,
        limits.max_inflated_bytes,
        limits.max_query_bytes,
        limits.request_timeout_seconds,
        limits.max_search_results,
        limits.max_frames_per_request,
        limits.max_rendered_pixels,
        limits.max_header_bytes,
    ) == (11, 12, 13, 2, 14, 15, 16, 17, 18, 19, 20, 21)
    assert Limits() == Settings.from_environment({}).limits


def test_a_malformed_limit_setting_says_which():
    import pytest

    with pytest.raises(ValueError, match="DICOM_MAX_QUERY_BYTES"):
        Settings.from_environment({"DICOM_MAX_QUERY_BYTES": "lots"})


async def test_frame_list_over_the_limit_is_a_400_naming_it(client, with_limits):
    with_limits(max_frames_per_request=5)
    frames = ",".join(str(n) for n in range(1, 7))
    response = await client.get(f"/v2/studies/1.2/series/1.3/instances/1.4/frames/{frames}")
    assert response.status_code == 400
    assert "DICOM_MAX_FRAMES_PER_REQUEST" in response.json()["message"]


async def test_a_frame_list_of_huge_length_is_refused_without_parsing_it(client):
    frames = ",".join(["1"] * 30_000)  # 60 KB: httpx refuses longer URLs
    response = await client.get(f"/v2/studies/1.2/series/1.3/instances/1.4/frames/{frames}")
    assert response.status_code == 400
    assert "DICOM_MAX_FRAMES_PER_REQUEST" in response.json()["message"]


async def test_search_limit_above_the_maximum_is_cut_with_a_warning(client, with_limits):
    with_limits(max_search_results=2)
    for _ in range(3):
        body, boundary = multipart([new_instance(patient_id="LIMITS")])
        assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
    response = await client.get("/v2/studies?PatientID=LIMITS&limit=50")
    assert response.status_code == 200
    assert len(response.json()) == 2
    assert "DICOM_MAX_SEARCH_RESULTS" in response.headers["warning"]
