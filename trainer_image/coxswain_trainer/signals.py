"""SIGTERM/SIGINT become a request to stop at the next step boundary (checkpoint, then exit)."""

from __future__ import annotations

import signal
from types import FrameType

EXIT_SIGTERM = 143
EXIT_SIGINT = 130


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.signum == signal.SIGINT else EXIT_SIGTERM

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signum = signum

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)


class Interrupted(Exception):
    """Raised at a step boundary after a stop was requested."""
