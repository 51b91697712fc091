"""Ordered, bounded-concurrency async streams for responses: the first item is ready before the status is sent."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

RETRIEVE_CONCURRENCY = 8
"""Files (or frames) read from the lake at the same time for one response."""

T = TypeVar("T")
R = TypeVar("R")
_END: Any = object()


async def in_order(items: Iterable[T], open_one: Callable[[T], Awaitable[R]]) -> AsyncIterator[R]:
    """``open_one`` of each item, yielded in order, with up to RETRIEVE_CONCURRENCY opened ahead."""
    iterator = iter(items)
    pending: deque[asyncio.Future[R]] = deque()

    def refill() -> None:
        while len(pending) < RETRIEVE_CONCURRENCY:
            item = next(iterator, _END)
            if item is _END:
                return
            pending.append(asyncio.ensure_future(open_one(item)))

    try:
        refill()
        while pending:
            result = await pending.popleft()
            refill()
            yield result
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def started(items: AsyncIterator[R]) -> AsyncIterator[R]:
    """Wait for the first item, so that its failure becomes the response status; then all of them."""
    first = await anext(items)
    return prepend(first, items)


async def prepend(first: R, rest: AsyncIterator[R]) -> AsyncIterator[R]:
    yield first
    async for item in rest:
        yield item


async def single(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def iterate(items: Iterable[R]) -> AsyncIterator[R]:
    for item in items:
        yield item
