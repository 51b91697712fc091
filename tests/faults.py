"""Fault injection over the real adapters: a method that fails from its Nth call on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from azure.core.exceptions import HttpResponseError, ServiceRequestError


def outage() -> Exception:
    """What the SDK raises when storage cannot be reached."""
    return ServiceRequestError("injected outage: connection refused")


def refused(status: int = 403, code: str = "AuthorizationPermissionMismatch") -> Exception:
    error = HttpResponseError(message=f"injected {status}")
    error.status_code = status
    error.error_code = code
    return error


def failing_from(
    method: Callable[..., Awaitable], call: int, error: Callable[[], Exception] = outage
) -> Callable[..., Awaitable]:
    """``method`` (a bound method of a real adapter) that raises ``error()`` on its ``call``-th call and after."""
    calls = 0

    async def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls >= call:
            raise error()
        return await method(*args, **kwargs)

    return wrapped
