"""Stop that always ends on "Stopped." (or, with nothing to stop, says so): which browser sessions have a generation
running or queued.

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
STOPPED = "Stopped."
NOTHING_RUNNING = "Nothing was running: there was nothing to stop."


def session_of(request) -> Optional[str]:
    """The browser session a request comes from (None for a call without one)."""
    return getattr(request, "session_hash", None) if request is not None else None


class ActiveRuns:
    """Counts the generations running per session; `wait_until_idle` blocks until a session has none."""

    def __init__(self) -> None:
        self._running: Dict[str, int] = {}
        self._stopped: Set[str] = set()  # sessions whose last run was ended by Stop
        self._idle_stops: Set[str] = set()  # sessions whose last Stop found nothing to stop
        # Runs asked for (the page's Generate) and runs started, per session: more asked for than started is a
        # run waiting in the queue, which Stop cancels too. Counts, not a flag: the page's note of the click and
        # the queued run itself reach the server in either order.
        self._asked: Dict[str, int] = {}
        self._started: Dict[str, int] = {}
        self._changed = threading.Condition()

    def asked(self, session: Optional[str]) -> None:
        """The page asked for a run (its Generate was clicked): it is queued until `track` starts it."""
        if session is not None:
            with self._changed:
                self._asked[session] = self._asked.get(session, 0) + 1

    @contextmanager
    def track(self, session: Optional[str]) -> Iterator[None]:
        if session is None:
            yield
            return
        with self._changed:
            self._running[session] = self._running.get(session, 0) + 1
            self._started[session] = self._started.get(session, 0) + 1
            self._stopped.discard(session)  # a new run: a Stop before it no longer applies
            self._idle_stops.discard(session)
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

    def busy(self, session: Optional[str]) -> bool:
        """Whether `session` has a run going, or one asked for that has not started (queued)."""
        with self._changed:
            return self._busy(session)

    def _busy(self, session: Optional[str]) -> bool:
        return session is not None and (self._running.get(session, 0) > 0
                                        or self._asked.get(session, 0) > self._started.get(session, 0))

    def mark_stopped(self, session: Optional[str]) -> bool:
        """Notes a Stop of `session`; True if it had a run going or queued (which Stop cancels), False if it had
        nothing to stop (True for a call without a session: unknown)."""
        if session is None:
            return True
        with self._changed:
            busy = self._busy(session)
            self._stopped.add(session)
            if busy:
                self._idle_stops.discard(session)
            else:
                self._idle_stops.add(session)
            # Stop cancels the queued runs too: none of them will start.
            self._asked[session] = self._started[session] = max(self._asked.get(session, 0),
                                                                 self._started.get(session, 0))
            return busy

    def stopped_nothing(self, session: Optional[str]) -> bool:
        """Whether the session's last Stop found no run going or queued (and no run started since)."""
        with self._changed:
            return session in self._idle_stops

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
    """Stop's first answer, at once: "Stopped.", or that nothing was running (no run going or queued for this
    session); it notes the Stop so that the cancelled event's failure reads "Stopped."."""
    def stop(request: gr.Request) -> str:
        return STOPPED if active_runs.mark_stopped(session_of(request)) else NOTHING_RUNNING

    return stop


def failure_status(active_runs: ActiveRuns):
    """The status after a failed run event: Gradio reports a cancelled one as failed too."""
    def failed(request: gr.Request) -> str:
        return STOPPED if active_runs.was_stopped(session_of(request)) else "Stopped by an error: see the message."

    return failed


def stopped_after(active_runs: ActiveRuns, wait_s: float = STOP_WAIT_S):
    """Stop's follow-up: "Stopped." once this session's run has ended (at most `wait_s` later); the first answer's
    "nothing was running" again where Stop found nothing to stop."""
    def stopped(request: gr.Request) -> str:
        session = session_of(request)
        active_runs.wait_until_idle(session, wait_s)
        return NOTHING_RUNNING if active_runs.stopped_nothing(session) else STOPPED

    return stopped


def note_asked(active_runs: ActiveRuns):
    """Notes, at the click (not queued), that the page asked this session's run: Stop while it waits in the queue
    is a Stop of it."""
    def asked(request: gr.Request) -> None:
        active_runs.asked(session_of(request))

    return asked


def wire_stop(stop: gr.Button, event, status: gr.Markdown, active_runs: ActiveRuns, triggers=None) -> None:
    """A Stop button for a streaming run `event` (its function tracks its runs in `active_runs`) whose status line is
    `status`: "Stopped." now, and again once the cancelled run has ended: that second answer is queued, so it comes
    over the session's stream after every update the run sent. With no run going or queued (`triggers`: the
    events that start the run, so that a queued run counts) it says that nothing was running. The run's failure
    (Gradio reports a cancelled event as failed) reads "Stopped." after a Stop, else that an error stopped it.
    Call inside gr.Blocks."""
    if triggers:
        gr.on(triggers, note_asked(active_runs), None, None, queue=False, api_name=False, show_progress="hidden")
    event.failure(failure_status(active_runs), None, status, queue=False, api_name=False)
    stop.click(stop_now(active_runs), None, status, cancels=[event], queue=False, api_name=False).then(
        stopped_after(active_runs), None, status, api_name=False, concurrency_limit=None)
