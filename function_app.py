"""Azure Functions entry point (Python v2 programming model).

Thin by design: it binds triggers to dicom_core.

- One HTTP-triggered function per entry of the route table, named after it (the
  names Application Insights shows), using the HTTP streams extension
  (azurefunctions-extensions-http-fastapi) so bodies stream instead of being
  buffered and capped at ~100 MB. Function keys guard every route except the
  public health check; App Service Authentication adds Entra ID (docs/security.md).
- A timer every 30 seconds writes and reads back the health file.
- A timer every 15 seconds runs the pending long-running operations (docs/operations.md)
  for at most ``OPERATIONS_BUDGET_SECONDS``, well within the function timeout; leases
  keep a second instance from running the same operation.
- A timer every minute applies the change feed to the analytics Delta tables, and
  one every hour compacts and vacuums them (operations/analytics.py).
- An Event Grid-sourced blob trigger on the lake file system (connection
  ``DicomLake``) for files created under the contract folders, and an Event Grid
  trigger for ``Microsoft.Storage.BlobDeleted``: both reconcile the path.
"""

from __future__ import annotations

import asyncio

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob
from azurefunctions.extensions.http.fastapi import Request, Response

from dicom_core.events import check_health, path_from_event_subject, path_in_file_system, reconcile_event, run_operations
from dicom_core.http.auth import Access
from dicom_core.http.context import provide_services
from dicom_core.http.errors import Handler
from dicom_core.http.routes import route_table
from dicom_core.operations.analytics import maintain, sync
from dicom_core.services import Services
from dicom_core.settings import Settings
from dicom_core.storage.layout import LakeLayout

HEALTH_SCHEDULE = "*/30 * * * * *"  # NCRONTAB with seconds: at :00 and :30 of every minute
OPERATIONS_SCHEDULE = "*/15 * * * * *"
OPERATIONS_BUDGET_SECONDS = 240  # one run's share of work; the lease carries the rest to the next run
ANALYTICS_SYNC_SCHEDULE = "0 * * * * *"  # every minute, at :00
ANALYTICS_MAINTENANCE_SCHEDULE = "0 30 * * * *"  # every hour, at half past
LAKE_CONNECTION = "DicomLake"

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

_services: Services | None = None
_services_lock = asyncio.Lock()


async def shared_services() -> Services:
    """This worker's services, opened on first use from the app settings (docs/settings.md)."""
    global _services
    async with _services_lock:
        if _services is None:
            _services = await Services.open(Settings.from_environment())
    return _services


def _bind(name: str, endpoint: Handler):
    async def handle(req: Request) -> Response:
        provide_services(req.scope, await shared_services())
        return await endpoint(req)

    # The worker indexes functions by their Python name too: give each its route's name.
    handle.__name__ = handle.__qualname__ = name
    return handle


for _route in route_table():
    _level = func.AuthLevel.ANONYMOUS if _route.access is Access.PUBLIC else func.AuthLevel.FUNCTION
    app.function_name(_route.name)(
        app.route(route=_route.path.lstrip("/"), methods=list(_route.methods), auth_level=_level)(
            _bind(_route.name, _route.endpoint)
        )
    )


# The contract folders of the lake file system (docs/lake-layout.md), from the app settings.
CONTRACT_BLOB_PATH = "%DICOM_FILESYSTEM%/" + LakeLayout("%DICOM_WORKSPACE%", "%DICOM_SERVICE%").root + "{name}"


@app.function_name("health_check_timer")
@app.timer_trigger(schedule=HEALTH_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=False)
async def health_check_timer(timer: func.TimerRequest) -> None:
    await check_health(await shared_services())


@app.function_name("operations_timer")
@app.timer_trigger(schedule=OPERATIONS_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=False)
async def operations_timer(timer: func.TimerRequest) -> None:
    await run_operations(await shared_services(), OPERATIONS_BUDGET_SECONDS)


@app.function_name("analytics_sync_timer")
@app.timer_trigger(schedule=ANALYTICS_SYNC_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=False)
async def analytics_sync_timer(timer: func.TimerRequest) -> None:
    # Hosts that fire together find the lease taken and skip: one writer at a time.
    await sync(await shared_services())


@app.function_name("analytics_maintenance_timer")
@app.timer_trigger(schedule=ANALYTICS_MAINTENANCE_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=False)
async def analytics_maintenance_timer(timer: func.TimerRequest) -> None:
    await maintain(await shared_services())


@app.function_name("lake_blob_created")
@app.blob_trigger(arg_name="client", path=CONTRACT_BLOB_PATH, connection=LAKE_CONNECTION, source=func.BlobSource.EVENT_GRID)
async def lake_blob_created(client: blob.BlobClient) -> None:
    # An SDK-type binding: the trigger hands over a client, not the file's bytes (files can be GBs).
    services = await shared_services()
    path = path_in_file_system(f"{client.container_name}/{client.blob_name}", services.settings.file_system)
    await reconcile_event(services, path, "blob_created")


@app.function_name("lake_blob_deleted")
@app.event_grid_trigger(arg_name="event")
async def lake_blob_deleted(event: func.EventGridEvent) -> None:
    if event.event_type != "Microsoft.Storage.BlobDeleted":
        return
    services = await shared_services()
    await reconcile_event(services, path_from_event_subject(event.subject, services.settings.file_system), "blob_deleted")
