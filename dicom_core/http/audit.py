"""One structured audit event per request that reads or changes patient data.

Events go to the ``dicom_core.audit`` logger, which the Functions host forwards to
Application Insights (``traces``). They say who, which operation, which
partition/study/series/instance (UIDs from the URL), the names of the query keys,
the outcome (``success``, ``failure``, or ``client-disconnected`` with status 499 when
the client closed the connection mid-request) and the duration. They never carry
patient names, IDs or any query value: those identify patients. Query in Application Insights with::

    traces | where message startswith "AUDIT " | extend event = parse_json(substring(message, 6))
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from starlette.requests import Request

from dicom_core.http.errors import CLIENT_CLOSED_REQUEST

logger = logging.getLogger("dicom_core.audit")

_UID_PARAMETERS = {"study": "study", "series": "series", "instance": "instance", "sop": "instance"}


def audit_event(request: Request, operation: str, who: str, status: int, started: float) -> dict:
    """The audit event of a finished request."""
    event = {
        "time": datetime.now(UTC).isoformat(),
        "operation": operation,
        "method": request.method,
        "who": who,
        "partition": request.path_params.get("partition", "Microsoft.Default"),
        "status": status,
        "outcome": _outcome(status),
        "durationMs": round((time.perf_counter() - started) * 1000, 1),
    }
    for parameter, name in _UID_PARAMETERS.items():
        if parameter in request.path_params:
            event[name] = request.path_params[parameter][:64]
    if request.query_params:
        event["queryKeys"] = sorted({key[:64] for key in request.query_params})
    return event


def _outcome(status: int) -> str:
    if status == CLIENT_CLOSED_REQUEST:
        return "client-disconnected"  # the client went away mid-request: not a failure of the service
    return "success" if status < 400 else "failure"


def emit(event: dict) -> None:
    logger.info("AUDIT %s", json.dumps(event, separators=(",", ":")), extra={"custom_dimensions": event})
