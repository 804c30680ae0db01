"""Stop that always ends on "Stopped.": which browser sessions have a generation running.

Why: Stop cancels the streaming generate event and writes "Stopped." at once, but a preview update
the cancelled run had already sent could land after it and leave "Stage 1/3 · step 43/200" on the
status line (issue 13). A sleep before writing "Stopped." again only made that rarer. Here Stop's
follow-up step is a queued event that waits until this session's generation has really ended (its
generator closed) and only then answers "Stopped.". Gradio sends a session's queued messages over
one stream in the order they were put on it, and a cancelled event sends nothing more, so every
update of the cancelled run is already ahead of that answer: the last word is "Stopped.".
Gradio also reports a cancelled event as failed; `was_stopped` tells that apart from a real error.
`wire_stop` gives a tab's Stop button all of this (Generate, Edit and Upscale each have their own ActiveRuns,
so that one tab's Stop waits for that tab's run only); the tab's function tracks its run with `track`.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Set

import gradio as gr

STOP_WAIT_S = 10.0  # Stop's follow-up waits at most this long for the cancelled run to end


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


def stop_now(active_runs: ActiveRuns):
    """Stop's first answer, at once; it notes the Stop so that the cancelled event's failure reads "Stopped."."""
    def stop(request: gr.Request) -> str:
        active_runs.mark_stopped(session_of(request))
        return "Stopped."

    return stop


def failure_status(active_runs: ActiveRuns):
    """The status after a failed run event: Gradio reports a cancelled one as failed too."""
    def failed(request: gr.Request) -> str:
        return "Stopped." if active_runs.was_stopped(session_of(request)) else "Stopped by an error: see the message."

    return failed


def stopped_after(active_runs: ActiveRuns, wait_s: float = STOP_WAIT_S):
    """Stop's follow-up: "Stopped." once this session's run has ended (at most `wait_s` later)."""
    def stopped(request: gr.Request) -> str:
        active_runs.wait_until_idle(session_of(request), wait_s)
        return "Stopped."

    return stopped


def wire_stop(stop: gr.Button, event, status: gr.Markdown, active_runs: ActiveRuns) -> None:
    """A Stop button for a streaming run `event` (its function tracks its runs in `active_runs`) whose status line is
    `status`: "Stopped." now, and again once the cancelled run has ended: that second answer is queued, so it comes
    over the session's stream after every update the run sent. The run's failure (Gradio reports a cancelled event
    as failed) reads "Stopped." after a Stop, else that an error stopped it. Call inside gr.Blocks."""
    event.failure(failure_status(active_runs), None, status, queue=False, api_name=False)
    stop.click(stop_now(active_runs), None, status, cancels=[event], queue=False, api_name=False).then(
        stopped_after(active_runs), None, status, api_name=False, concurrency_limit=None)
