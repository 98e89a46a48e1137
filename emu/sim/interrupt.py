"""Ending a run on request (SIGINT, SIGTERM) without losing what it found.

Signals are process-wide, so the request is too: ``INTERRUPT``. Whoever owns the process
(the CLI) installs ``handle_signals``; the first signal only *asks*: the running schedule
ends at its next decision (the controller polls nothing: the request lowers its step limit,
a comparison it makes anyway) and a hunt runs no further schedule. The handler never raises
inside Trio or inside a file write, so nothing is left half-done. A second signal means
"now": it raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import EmuError


class Interrupted(EmuError):
    """The run ended because the user asked it to (not a finding, not a usage error)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class Interrupt:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._controller: Any = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        self.signum = signum
        if self._controller is not None:
            self._controller.stop_soon(Interrupted(signum))

    def attach(self, controller: Any) -> None:
        """``controller`` runs now: a request ends it at its next decision."""
        self._controller = controller
        if self.signum is not None:
            controller.stop_soon(Interrupted(self.signum))

    def detach(self) -> None:
        self._controller = None

    def check(self) -> None:
        """Raise ``Interrupted`` if a stop was requested."""
        if self.signum is not None:
            raise Interrupted(self.signum)


INTERRUPT = Interrupt()


@contextlib.contextmanager
def handle_signals() -> Iterator[Interrupt]:
    """SIGINT and SIGTERM request a stop; a second one raises KeyboardInterrupt at once."""
    INTERRUPT.signum = None
    if threading.current_thread() is not threading.main_thread():
        yield INTERRUPT  # only the main thread may handle signals
        return

    def handler(signum: int, _frame: Any) -> None:
        if INTERRUPT.requested:
            raise KeyboardInterrupt
        INTERRUPT.request(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield INTERRUPT
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        INTERRUPT.detach()
