"""The shape of a route-table entry, shared by the local server and function_app.py."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_core.http.errors import Handler, with_error_handling

API_PREFIX = "/v2"
PARTITION_PREFIX = "/partitions/{partition}"


@dataclass(frozen=True)
class Route:
    """One DICOMweb resource: ``path`` is relative to /v2 and exists under a partition too."""

    name: str
    path: str
    methods: tuple[str, ...]
    handler: Handler
    partitioned: bool = True

    def expand(self) -> list[ExpandedRoute]:
        """The /v2 form and, when partitioned, the /v2/partitions/{partition} form."""
        endpoint = with_error_handling(self.handler)
        forms = [ExpandedRoute(self.name, f"{API_PREFIX}{self.path}", self.methods, endpoint)]
        if self.partitioned:
            forms.append(
                ExpandedRoute(f"{self.name}_in_partition", f"{API_PREFIX}{PARTITION_PREFIX}{self.path}", self.methods, endpoint)
            )
        return forms


@dataclass(frozen=True)
class ExpandedRoute:
    name: str  # unique; the Azure Function's name, which Application Insights shows
    path: str  # Starlette path syntax, e.g. /v2/studies/{study}
    methods: tuple[str, ...]
    endpoint: Handler
