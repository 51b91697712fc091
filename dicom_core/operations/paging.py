"""Paging of search results (QIDO-RS and UPS-RS): read one match past the page, and say when there are more.

A search reads ``offset + limit + 1`` matches and stops: the extra one tells whether a
``Warning`` header is due (PS3.18 8.3.4.4), and nothing past it is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

WARNING_AGENT = "dicomweb-lake"
"""The warn-agent of every Warning header the service sends (RFC 7234 5.5)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """The matches of one page, and the Warning header when more exist."""

    items: list[T]
    warning: str | None


async def page_of(matches: AsyncIterator[T], offset: int, limit: int, capped: bool) -> Page[T]:
    """Matches ``offset`` to ``offset + limit`` of ``matches``, reading one more at most (then closing it)."""
    wanted = offset + limit + 1
    found: list[T] = []
    try:
        async for match in matches:
            found.append(match)
            if len(found) >= wanted:
                break
    finally:
        await matches.aclose()  # type: ignore[attr-defined]
    more = more_results_warning(offset, limit, capped) if len(found) > offset + limit else None
    return Page(found[offset : offset + limit], more)


def more_results_warning(offset: int, limit: int, capped: bool) -> str:
    """The Warning header of a page that is not the last (PS3.18 8.3.4.4); ``capped``: the limit asked for was cut."""
    cap = f" (at most {limit} per request: DICOM_MAX_SEARCH_RESULTS)" if capped else ""
    return (
        f'299 {WARNING_AGENT} "The number of results exceeded the limit{cap}. Additional results can be '
        f'requested with offset={offset + limit}."'
    )
