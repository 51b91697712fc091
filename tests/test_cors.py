"""CORS for browser viewers: preflights answered, headers exposed, origins from a setting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.dicom_files import multipart, new_instance, stow_headers

VIEWER = "http://viewer.example:3000"


@pytest.fixture
def allow(services):
    def apply(*origins: str) -> None:
        services.settings = replace(services.settings, cors_origins=origins)

    return apply


async def test_preflight_of_an_allowed_origin(client, allow):
    allow(VIEWER)
    response = await client.options(
        "/v2/studies",
        headers={"Origin": VIEWER, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == VIEWER
    assert "POST" in response.headers["access-control-allow-methods"]
    for header in ("authorization", "content-type", "accept"):
        assert header in response.headers["access-control-allow-headers"]


async def test_preflight_of_another_origin_is_refused(client, allow):
    allow(VIEWER)
    response = await client.options("/v2/studies", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert "DICOM_CORS_ORIGINS" in response.json()["message"]
    assert "access-control-allow-origin" not in response.headers


async def test_responses_expose_the_headers_viewers_read(client, allow):
    allow(VIEWER)
    body, boundary = multipart([new_instance()])
    response = await client.post("/v2/studies", content=body, headers=stow_headers(boundary) | {"Origin": VIEWER})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == VIEWER
    exposed = response.headers["access-control-expose-headers"]
    for header in ("content-type", "warning", "location", "content-location"):
        assert header in exposed


async def test_any_origin_with_a_star_and_none_without_the_setting(client, allow):
    body, boundary = multipart([new_instance()])
    response = await client.post("/v2/studies", content=body, headers=stow_headers(boundary) | {"Origin": VIEWER})
    assert "access-control-allow-origin" not in response.headers
    allow("*")
    response = await client.options("/v2/studies/1.2.3", headers={"Origin": "http://anything.example"})
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"


def test_cors_origins_setting_is_parsed():
    from dicom_core.settings import Settings

    settings = Settings.from_environment({"DICOM_CORS_ORIGINS": " http://a.example/ , http://b.example:8080"})
    assert settings.cors_origins == ("http://a.example", "http://b.example:8080")
