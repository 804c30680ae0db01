"""ActiveRuns: Stop's follow-up waits for the session's generation to end (imagen_app/ui_stop.py); the Edit and
Upscale tabs' Stop is wired the same way (ui_stop.wire_stop)."""
import threading
import time

import pytest
from PIL import Image

from imagen_app.app.stop import ActiveRuns, session_of

from conftest import edit_named

FIRST_PANE = {"edit": 1, "upscale": 2}  # the tab's first stage pane (Upscale starts at stage 2)


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


# ----- the Edit and Upscale tabs' Stop: wired as Generate's (ui_edit.build_edit_tabs, ui_stop.wire_stop) ----------
class Req:  # what session_of reads of a gr.Request
    def __init__(self, session):
        self.session_hash = session


def stop_wiring(demo, api_name):
    """(run, Stop's first answer, its queued follow-up, the run's failure handler) of the tab whose run is `api_name`."""
    fns = demo.fns
    run_id = next(i for i, f in fns.items() if f.api_name == api_name)
    cancel = next(f for f in fns.values() if f.cancels == [run_id])  # Stop's cancel of the run
    stop_id = next(i for i, f in fns.items() if f.fn is not None and f.targets == cancel.targets)
    after = next(f for f in fns.values() if f.trigger_after == stop_id and not f.trigger_only_on_failure)
    failure = next(f for f in fns.values() if f.trigger_after == run_id and f.trigger_only_on_failure)
    return fns[run_id], fns[stop_id], after, failure


@pytest.fixture(scope="module")
def edit_demo(tiny_pipe):
    import gradio as gr

    from imagen_app.app.ui import PipelineHolder
    from imagen_app.app.edit_tabs import build_edit_tabs

    with gr.Blocks() as demo:
        build_edit_tabs(PipelineHolder(tiny_pipe))
    return demo


def start_run(demo, api_name, session):
    """A run of the tab, as Gradio runs it for `session`, advanced to its first preview (so it is running)."""
    fn = stop_wiring(demo, api_name)[0].fn
    image = Image.new("RGB", (32, 32), (200, 30, 60))
    run = (fn({"background": image, "layers": [], "composite": None}, "red heart", 1.0, 0, request=Req(session))
           if api_name == "edit" else fn(image, "red heart", 0, request=Req(session)))
    status = edit_named(next(run), FIRST_PANE[api_name])["status"]
    assert "stage" in status, status  # a preview's status line: the run is under way
    return run


def in_thread(fn, *args):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn(*args)), daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("api_name", ["edit", "upscale"])
def test_stop_is_wired_as_generates(edit_demo, api_name):
    """Stop answers at once (not queued) and cancels the run; its follow-up is queued (so it comes after every update
    of the cancelled run) with no concurrency limit (never behind a run in the queue); the run's failure is handled."""
    run, stop, after, failure = stop_wiring(edit_demo, api_name)
    assert run.queue and not stop.queue and after.queue and after.concurrency_limit is None and not failure.queue
    assert len(stop.outputs) == 1 and stop.outputs == after.outputs == failure.outputs
    assert edit_named(run.outputs, FIRST_PANE[api_name])["status"] is stop.outputs[0]  # the tab's own status line


@pytest.mark.parametrize("api_name", ["edit", "upscale"])
def test_stop_follow_up_waits_for_the_tabs_run_of_that_session(edit_demo, api_name):
    _, stop, after, failure = stop_wiring(edit_demo, api_name)
    run = start_run(edit_demo, api_name, "s1")
    try:
        assert stop.fn(Req("s1")) == "Stopped."  # the first answer, at once
        assert after.fn(Req("s2")) == "Stopped."  # another session has no run: at once
        waiter, out = in_thread(after.fn, Req("s1"))
        waiter.join(0.3)
        assert waiter.is_alive() and not out  # waits while the run is open
    finally:
        t0 = time.monotonic()
        run.close()  # as Gradio closes a cancelled generator
    waiter.join(5)
    assert not waiter.is_alive() and out["value"] == "Stopped." and time.monotonic() - t0 < 3
    assert failure.fn(Req("s1")) == "Stopped."  # the cancelled event's failure, after a Stop
    assert failure.fn(Req("s2")) == "Stopped by an error: see the message."  # a real error (no Stop)


def test_each_tab_waits_for_its_own_run_only(edit_demo):
    """Stop on the Edit tab does not wait for an Upscale run of the same session, and the other way round."""
    _, _, edit_after, _ = stop_wiring(edit_demo, "edit")
    _, _, up_after, _ = stop_wiring(edit_demo, "upscale")
    upscale = start_run(edit_demo, "upscale", "s1")
    try:
        t0 = time.monotonic()
        assert edit_after.fn(Req("s1")) == "Stopped." and time.monotonic() - t0 < 1
        waiter, out = in_thread(up_after.fn, Req("s1"))
        waiter.join(0.3)
        assert waiter.is_alive()
    finally:
        upscale.close()
    waiter.join(5)
    assert out["value"] == "Stopped."


def test_a_run_that_ends_by_itself_is_no_longer_tracked(edit_demo):
    _, _, after, _ = stop_wiring(edit_demo, "edit")
    run = start_run(edit_demo, "edit", "s3")
    *_, final = run
    assert edit_named(final, FIRST_PANE["edit"])["status"].startswith("Done")
    t0 = time.monotonic()
    assert after.fn(Req("s3")) == "Stopped." and time.monotonic() - t0 < 1
