"""ActiveRuns: Stop's follow-up waits for the session's generation to end (imagen_app/ui_stop.py)."""
import threading
import time

from imagen_app.ui_stop import ActiveRuns, session_of


def test_wait_returns_once_the_generator_is_closed():
    runs = ActiveRuns()

    def gen():
        with runs.track("s1"):
            while True:
                yield "preview"

    g = gen()
    next(g)
    assert runs.running("s1") == 1 and runs.running("s2") == 0
    assert not runs.wait_until_idle("s1", timeout_s=0.1)  # still running: times out
    assert runs.wait_until_idle("s2", timeout_s=0.1)  # another session is idle at once
    closer = threading.Timer(0.2, g.close)  # as Gradio closes a cancelled generator
    closer.start()
    t0 = time.monotonic()
    assert runs.wait_until_idle("s1", timeout_s=5)
    assert 0.15 < time.monotonic() - t0 < 3 and runs.running("s1") == 0


def test_counts_overlapping_runs_and_ignores_calls_without_a_session():
    runs = ActiveRuns()
    with runs.track("s"):
        with runs.track("s"):
            assert runs.running("s") == 2
        assert runs.running("s") == 1 and not runs.wait_until_idle("s", timeout_s=0.05)
    assert runs.running("s") == 0 and runs.wait_until_idle("s", timeout_s=0.05)
    with runs.track(None):  # an API call without a browser session is not tracked
        assert runs.running(None) == 0 and runs.wait_until_idle(None, timeout_s=0.05)


def test_an_error_in_the_run_still_ends_it():
    runs = ActiveRuns()
    try:
        with runs.track("s"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert runs.running("s") == 0


def test_session_of():
    class Req:
        session_hash = "abc"

    assert session_of(Req()) == "abc" and session_of(None) is None


def test_a_stop_is_remembered_until_the_next_run():
    runs = ActiveRuns()
    assert not runs.was_stopped("s")
    runs.mark_stopped("s")
    assert runs.was_stopped("s") and not runs.was_stopped("t")
    with runs.track("s"):  # a new run of that session
        assert not runs.was_stopped("s")
