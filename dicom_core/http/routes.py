"""The route table: the single source of truth for the HTTP surface.

The local server (``python -m dicom_core serve``) and ``function_app.py`` both
register exactly these routes. Each feature module contributes its own list.
"""

from __future__ import annotations

from dicom_core.http import bulk_update, changefeed, delete, export, extended_tags, health, retrieve, search, store, workitems
from dicom_core.http.routing import ExpandedRoute, Route

FEATURE_ROUTES: list[Route] = [
    *bulk_update.ROUTES,  # first: its literal path would match the store route's {study}
    *store.ROUTES,
    *search.ROUTES,
    *retrieve.ROUTES,
    *delete.ROUTES,
    *changefeed.ROUTES,
    *health.ROUTES,
    *workitems.ROUTES,
    *extended_tags.ROUTES,
    *export.ROUTES,
]


def route_table() -> list[ExpandedRoute]:
    """Every route in both forms (/v2/... and /v2/partitions/{partition}/...)."""
    return [expanded for route in FEATURE_ROUTES for expanded in route.expand()]
