"""The Azure Functions wiring (function_app.py), checked through app.get_functions(),
and its user functions called directly with real requests and events against Azurite."""

from __future__ import annotations

import datetime
import io
import json

import azure.functions as func
import pydicom
import pytest
from azure.storage.blob import BlobServiceClient
from starlette.requests import Request

import function_app
from dicom_core.http.auth import Access
from dicom_core.http.routes import route_table
from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import multipart, new_instance, stow_headers
from tests.environments import server_environment

FUNCTIONS = {function.get_function_name(): function for function in function_app.app.get_functions()}


def bindings(name: str) -> list[dict]:
    return json.loads(FUNCTIONS[name].get_function_json())["bindings"]


def test_every_route_table_entry_is_one_http_function():
    routes = route_table()
    http_functions = {name for name, function in FUNCTIONS.items() if bindings(name)[0]["type"] == "httpTrigger"}
    assert http_functions == {route.name for route in routes}
    for route in routes:
        trigger = bindings(route.name)[0]
        assert trigger["route"] == route.path.removeprefix("/")
        assert trigger["methods"] == list(route.methods)
        expected_level = "ANONYMOUS" if route.access is Access.PUBLIC else "FUNCTION"
        assert trigger["authLevel"] == expected_level, route.name


def test_only_the_health_check_is_anonymous():
    anonymous = {name for name, function in FUNCTIONS.items() if bindings(name)[0].get("authLevel") == "ANONYMOUS"}
    assert anonymous == {"health_check"}


def test_health_timer_fires_every_30_seconds():
    (trigger,) = bindings("health_check_timer")
    assert trigger["type"] == "timerTrigger"
    assert trigger["schedule"] == "*/30 * * * * *"
    assert trigger["runOnStartup"] is False


def test_operations_timer_fires_every_15_seconds():
    (trigger,) = bindings("operations_timer")
    assert trigger["type"] == "timerTrigger"
    assert trigger["schedule"] == "*/15 * * * * *"
    assert trigger["runOnStartup"] is False


def test_lake_triggers_watch_the_contract_folders_through_event_grid():
    (created,) = bindings("lake_blob_created")
    assert created["type"] == "blobTrigger"
    assert created["source"] == "EventGrid"
    assert created["connection"] == "DicomLake"
    assert created["path"] == "%DICOM_FILESYSTEM%/AHDS/%DICOM_WORKSPACE%/dicom/%DICOM_SERVICE%/{name}"
    (deleted,) = bindings("lake_blob_deleted")
    assert deleted["type"] == "eventGridTrigger"


@pytest.fixture
async def shared_from_environment(settings, monkeypatch):
    """The process-wide services the functions use, opened from the test's settings as app settings."""
    for name, value in server_environment(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(function_app, "_services", None)
    yield
    if function_app._services is not None:
        await function_app._services.close()


def http_request(method: str, path: str, body: bytes = b"", headers: dict | None = None, path_params=None) -> Request:
    """A request as the HTTP streams extension hands it to a function: Starlette's, with path_params."""
    raw_headers = [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    raw_headers.append((b"host", b"myapp.azurewebsites.net"))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": raw_headers,
        "scheme": "https",
        "server": ("myapp.azurewebsites.net", 443),
        "path_params": path_params or {},
    }
    chunks = [body]

    async def receive():
        return {"type": "http.request", "body": chunks.pop() if chunks else b"", "more_body": False}

    return Request(scope, receive)


async def read_body(response) -> bytes:
    if hasattr(response, "body_iterator"):
        return b"".join([chunk async for chunk in response.body_iterator])
    return response.body


async def test_functions_called_directly_behave_like_the_local_server(shared_from_environment, client, services):
    data = new_instance()
    body, boundary = multipart([data])
    store = FUNCTIONS["store_instances"].get_user_function()
    response = await store(http_request("POST", "/v2/studies", body, stow_headers(boundary)))
    assert response.status_code == 200
    answer = json.loads(await read_body(response))
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    url = answer["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url == (
        f"https://myapp.azurewebsites.net/v2/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
        f"/instances/{dataset.SOPInstanceUID}"
    )
    # The same request again: the function and the local server give the same answer (a 45070 conflict).
    again = await store(http_request("POST", "/v2/studies", body, stow_headers(boundary)))
    local = await client.post("/v2/studies", content=body, headers=stow_headers(boundary))
    assert again.status_code == local.status_code == 409
    assert json.loads(await read_body(again)) == local.json()
    # An invalid UID in the route: the same 400 and message from both.
    bad = FUNCTIONS["store_study_instances"].get_user_function()
    response = await bad(http_request("POST", "/v2/studies/1.x", body, stow_headers(boundary), {"study": "1.x"}))
    local = await client.post("/v2/studies/1.x", content=body, headers=stow_headers(boundary))
    assert response.status_code == local.status_code == 400
    assert json.loads(await read_body(response)) == local.json()


async def test_blob_created_and_deleted_events_reconcile_the_index(shared_from_environment, services, azurite_server):
    data = new_instance()
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    key = InstanceKey("Microsoft.Default", dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
    path = services.layout.instance_path(key)
    file_system = services.settings.file_system
    with BlobServiceClient.from_connection_string(azurite_server.connection_string) as blobs:
        blob_client = blobs.get_blob_client(file_system, path)
        blob_client.upload_blob(data)  # written by "AzCopy", not through the API
        await FUNCTIONS["lake_blob_created"].get_user_function()(blob_client)
        assert (await services.index.get_instance(key)).path == path
        blob_client.delete_blob()
    event = func.EventGridEvent(
        id="1",
        data={"api": "DeleteBlob", "url": f"http://127.0.0.1/devstoreaccount1/{file_system}/{path}"},
        topic="/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/lake",
        subject=f"/blobServices/default/containers/{file_system}/blobs/{path}",
        event_type="Microsoft.Storage.BlobDeleted",
        event_time=datetime.datetime.now(datetime.UTC),
        data_version="1",
    )
    await FUNCTIONS["lake_blob_deleted"].get_user_function()(event)
    assert await services.index.get_instance(key) is None


async def test_health_timer_writes_the_health_file(shared_from_environment, services):
    await FUNCTIONS["health_check_timer"].get_user_function()(None)
    files = [file.path async for file in services.lake.list(services.layout.health_folder)]
    assert files, "the timer wrote no health file"


async def test_operations_timer_runs_a_reindex_to_completion(shared_from_environment, client, services):
    data = new_instance(ProtocolName="Timer")
    body, boundary = multipart([data])
    assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
    added = await client.post("/v2/extendedquerytags", json=[{"path": "ProtocolName", "level": "Series"}])
    await FUNCTIONS["operations_timer"].get_user_function()(None)
    operation = (await client.get(f"/v2/operations/{added.json()['id']}")).json()
    assert (operation["status"], operation["percentComplete"]) == ("completed", 100)
    assert len((await client.get("/v2/series", params={"ProtocolName": "Timer"})).json()) == 1


def test_event_paths_outside_the_file_system_are_ignored():
    from dicom_core.events import path_from_event_subject, path_in_file_system

    assert path_in_file_system("dicom/AHDS/a.dcm", "dicom") == "AHDS/a.dcm"
    assert path_in_file_system("other/AHDS/a.dcm", "dicom") is None
    assert path_from_event_subject("/blobServices/default/containers/dicom/blobs/AHDS/x/y.dcm", "dicom") == "AHDS/x/y.dcm"
    assert path_from_event_subject("/blobServices/default/containers/other/blobs/AHDS/x.dcm", "dicom") is None
    assert path_from_event_subject("/fileServices/default/shares/dicom/files/x", "dicom") is None


def test_analytics_timers_sync_every_minute_and_maintain_every_hour():
    (sync_trigger,) = bindings("analytics_sync_timer")
    (maintenance_trigger,) = bindings("analytics_maintenance_timer")
    assert sync_trigger["type"] == maintenance_trigger["type"] == "timerTrigger"
    assert sync_trigger["schedule"] == "0 * * * * *"
    assert maintenance_trigger["schedule"] == "0 30 * * * *"
    assert sync_trigger["runOnStartup"] is maintenance_trigger["runOnStartup"] is False


async def test_analytics_timer_applies_the_change_feed(shared_from_environment, client, services):
    from dicom_core.operations.analytics import open_tables
    from tests.test_analytics import read

    body, boundary = multipart([new_instance(), new_instance()])
    assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
    await FUNCTIONS["analytics_sync_timer"].get_user_function()(None)
    await FUNCTIONS["analytics_maintenance_timer"].get_user_function()(None)
    tables = await open_tables(services)
    assert read(tables, "instances").num_rows == 2
    assert (await tables.applied_sequences())["instances"] == 2
