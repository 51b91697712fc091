"""``python -m dicom_core`` with a kill switch, for the crash tests: SIGKILL at the Nth call of an adapter method.

``DICOM_TEST_KILL_AT=Lake.write:7`` makes the 7th call of ``Lake.write`` kill the process
(SIGKILL: no cleanup, no flush, as a host that is recycled) just before it would run. The
real adapters run unchanged otherwise; the switch lives here, in the tests, never in the
service. The background loops (health check, analytics sync, operations) do not run, so that the Nth
call is the Nth call the requests make, whatever the timing.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

from dicom_core.__main__ import main
from dicom_core.http import app
from dicom_core.storage.changefeed_store import ChangeFeedStore
from dicom_core.storage.delete_journal import DeleteJournal
from dicom_core.storage.index import Index
from dicom_core.storage.lake import Lake
from dicom_core.storage.lookup import Lookup

ADAPTERS = {cls.__name__: cls for cls in (Lake, Index, Lookup, ChangeFeedStore, DeleteJournal)}


def arm(spec: str) -> None:
    """Wrap ``Class.method`` so that its ``N``-th call (``Class.method:N``) kills this process."""
    target, _, count = spec.rpartition(":")
    class_name, method_name = target.split(".")
    cls = ADAPTERS[class_name]
    original = getattr(cls, method_name)
    calls = 0

    @functools.wraps(original)
    async def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(*args, **kwargs)

    setattr(cls, method_name, wrapped)


async def _idle(services) -> None:
    """Stands in for a background loop."""


if __name__ == "__main__":
    app.run_health_checks = _idle
    app.run_analytics_sync = _idle
    app.run_operations_forever = _idle
    arm(os.environ["DICOM_TEST_KILL_AT"])
    sys.exit(main(sys.argv[1:]))
