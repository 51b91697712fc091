"""What every process of the local server shares: its logging, and stopping when the process that started it dies."""

from __future__ import annotations

import ctypes
import logging
import signal


def configure_logging() -> None:
    """Log at INFO with times, except the Azure SDKs, which log every HTTP request at INFO."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)


def stop_with_parent(stop: signal.Signals = signal.SIGTERM) -> None:
    """Ask Linux to send this process ``stop`` when its parent dies, SIGKILL included (prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, stop)  # 1 = PR_SET_PDEATHSIG
