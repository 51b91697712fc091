"""Fixtures: one real Azurite per test session, fresh storage names per test.

Every test gets its own file system and table prefix in the shared Azurite, so
tests never see each other's data, and talks to it through the production
adapters (dicom_core.services.Services).
"""

from __future__ import annotations

import os
from dataclasses import replace

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from dicom_core.http.app import create_app
from dicom_core.local import azurite
from dicom_core.services import Services
from dicom_core.settings import Settings
from tests.environments import isolated_settings


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory):
    location = tmp_path_factory.mktemp("azurite")
    server = azurite.start(location, log_file=location / "azurite.log")
    yield server
    server.stop()


@pytest.fixture
def settings(azurite_server) -> Settings:
    return isolated_settings(azurite_server.connection_string)


@pytest.fixture
async def services(settings: Settings):
    opened = await Services.open(settings)
    yield opened
    await opened.close()


@pytest.fixture
async def client(services: Services):
    """An HTTP client of the app, in process, sharing the test's services."""
    app = create_app(services.settings, services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield http


@pytest.fixture
def with_limits(services: Services):
    """Change the limits of the running services for one test."""

    def apply(**changes) -> None:
        services.settings = replace(services.settings, limits=replace(services.settings.limits, **changes))

    return apply


# Hypothesis: a short profile for the suite, a long one for `bash scripts/fuzz.sh`.
hypothesis_settings.register_profile("suite", max_examples=40, deadline=None)
hypothesis_settings.register_profile("long", max_examples=3000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
