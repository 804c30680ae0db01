"""Stop that always ends on "Stopped.": which browser sessions have a generation running.

Why: Stop cancels the streaming generate event and writes "Stopped." at once, but a preview update
the cancelled run had already sent could land after it and leave "Stage 1/3 · step 43/200" on the
status line (issue 13). A sleep before writing "Stopped." again only made that rarer. Here Stop's
follow-up step is a queued event that waits until this session's generation has really ended (its
generator closed) and only then answers "Stopped.". Gradio sends a session's queued messages over
one stream in the order they were put on it, and a cancelled event sends nothing more, so every
update of the cancelled run is already ahead of that answer: the last word is "Stopped.".
Gradio also reports a cancelled event as failed; `was_stopped` tells that apart from a real error.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Set


def session_of(request) -> Optional[str]:
    """The browser session a request comes from (None for a call without one)."""
    return getattr(request, "session_hash", None) if request is not None else None


class ActiveRuns:
    """Counts the generations running per session; `wait_until_idle` blocks until a session has none."""

    def __init__(self) -> None:
        self._running: Dict[str, int] = {}
        self._stopped: Set[str] = set()  # sessions whose last run was ended by Stop
        self._changed = threading.Condition()

    @contextmanager
    def track(self, session: Optional[str]) -> Iterator[None]:
        if session is None:
            yield
            return
        with self._changed:
            self._running[session] = self._running.get(session, 0) + 1
            self._stopped.discard(session)  # a new run: a Stop before it no longer applies
        try:
            yield
        finally:  # runs when the generator is closed: at its end, on Stop, or when the client goes away
            with self._changed:
                left = self._running.get(session, 1) - 1
                if left > 0:
                    self._running[session] = left
                else:
                    self._running.pop(session, None)
                self._changed.notify_all()

    def mark_stopped(self, session: Optional[str]) -> None:
        if session is not None:
            with self._changed:
                self._stopped.add(session)

    def was_stopped(self, session: Optional[str]) -> bool:
        with self._changed:
            return session in self._stopped

    def running(self, session: Optional[str]) -> int:
        with self._changed:
            return self._running.get(session, 0) if session is not None else 0

    def wait_until_idle(self, session: Optional[str], timeout_s: float) -> bool:
        """True once `session` has no generation running; False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while session is not None and self._running.get(session, 0) > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True
