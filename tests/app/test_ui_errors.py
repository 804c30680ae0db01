"""user_facing_errors (imagen_app/ui_inputs.py): the one shape of a run's errors on every tab (Generate, Edit,
Upscale, Compare): a ValueError names the input, an unexpected error is logged once and is a short message, a
gr.Error and a closed generator pass, and the run's freed memory is released in every case."""
import logging

import gradio as gr
import pytest

from imagen_app.app import inputs
from imagen_app.app.inputs import api_message, user_facing_errors

from conftest import generate_named


@pytest.fixture
def released(monkeypatch):
    calls = []
    monkeypatch.setattr(inputs, "release_freed_memory", lambda: calls.append(1))
    return calls


def tracebacks(caplog):
    return [r for r in caplog.records if r.exc_info]


def test_a_value_error_names_the_input_without_a_traceback(released, caplog):
    with pytest.raises(gr.Error) as err:
        with user_facing_errors("Generation"):  # the default message: api_message, the inputs as the API names them
            raise ValueError("num_inference_steps for stage 2 must be a whole number from 1 to 200")
    assert err.value.message == "steps_stage_2 (Steps, stage 2) must be a whole number from 1 to 200"
    assert err.value.print_exception is False and err.value.__cause__ is None and err.value.__suppress_context__
    assert not tracebacks(caplog) and any("input error" in r.getMessage() for r in caplog.records)
    assert released == [1]


def test_each_site_formats_its_own_value_error(released):
    with pytest.raises(gr.Error) as err:
        with user_facing_errors("Compare", lambda e: f"{e} (row_kind 'noise augmentation', stage 1)"):
            raise ValueError("noise augmentation rows need a super-resolution stage")
    assert err.value.message == "noise augmentation rows need a super-resolution stage (row_kind 'noise augmentation', stage 1)"
    assert released == [1]


def test_an_unexpected_error_is_logged_once_and_is_a_short_message(released, caplog):
    caplog.set_level(logging.INFO, logger="imagen_app.ui")
    with pytest.raises(gr.Error) as err:
        with user_facing_errors("Inpainting", api_message):
            raise RuntimeError("CUDA out of memory")
    assert err.value.message == "Inpainting failed: RuntimeError: CUDA out of memory"
    assert err.value.print_exception is False and err.value.__cause__ is None and err.value.__suppress_context__
    logged = tracebacks(caplog)
    assert len(logged) == 1 and logged[0].getMessage() == "Inpainting failed"
    assert logged[0].exc_info[0] is RuntimeError and logged[0].exc_text and "CUDA out of memory" in logged[0].exc_text
    assert released == [1]


def test_a_gr_error_passes_as_it_is(released, caplog):
    original = gr.Error("Upload an image to upscale.", duration=3)  # a ValueError too: let through before that branch
    with pytest.raises(gr.Error) as err:
        with user_facing_errors("Upscaling from 32 px", lambda e: "must not be called"):
            raise original
    assert err.value is original and err.value.message == "Upload an image to upscale."
    assert not caplog.records and released == [1]


def test_a_closed_generator_passes_untouched_and_its_own_finally_runs(released, caplog):
    """Stop (or a lost client) closes the run's generator at a `yield` inside the context manager: GeneratorExit is a
    BaseException, not an Exception, so it is neither logged nor turned into a message, and the generator closes."""
    order = []

    def run():
        with user_facing_errors("Generation"):
            try:
                while True:
                    yield "preview"
            except BaseException as e:
                order.append(type(e).__name__)
                raise
            finally:
                order.append("stream closed")  # as ui._generate's stream.close()

    g = run()
    assert next(g) == "preview"
    g.close()  # raises RuntimeError("generator ignored GeneratorExit") if anything swallowed it
    assert order == ["GeneratorExit", "stream closed"] and released == [1]
    assert not caplog.records
    with pytest.raises(StopIteration):
        next(g)


def test_the_memory_is_released_after_a_normal_end_too(released):
    def run():
        with user_facing_errors("Compare"):
            yield 1
            yield 2

    assert list(run()) == [1, 2] and released == [1]


def test_the_edit_and_upscale_stream_uses_it(released):
    """The Edit and Upscale stream (ui_edit.stream_panes): an unexpected error from the pipeline's events is the
    short message, the events are closed, the memory released."""
    from imagen_app.app.edit_tabs import stream_panes

    closed = []

    class Events:
        def __iter__(self):
            return self

        def __next__(self):
            raise KeyError("stage 2")

        def close(self):
            closed.append(1)

    with pytest.raises(gr.Error) as err:
        list(stream_panes(Events(), 3, 1, "Image-to-image"))
    assert err.value.message == "Image-to-image failed: KeyError: 'stage 2'"
    assert closed == [1] and released == [1]


# ----- over the app's real generate(): what a failing or closed run of the pipeline becomes --------------------------
class Stream:
    """A pipeline stream that fails with `error` at its first event (or, with `events`, runs them), and says
    whether it was closed."""

    def __init__(self, error=None, events=None):
        self.error, self.events, self.closed = error, events, False

    def __iter__(self):
        return self

    def __next__(self):
        if self.error is not None:
            raise self.error
        return next(self.events)

    def close(self):
        self.closed = True
        if self.events is not None:
            self.events.close()


@pytest.mark.parametrize("error, message", [
    (ValueError("dynamic_thresholding_percentile for stage 3 must be 0 (off) or from 50 to 100, got 20"),
     "dynamic_thresholding_percentile_stage_3 (Dynamic thresholding percentile, stage 3) must be 0 (off) or from 50 "
     "to 100, got 20"),
    (RuntimeError("CUDA out of memory"), "Generation failed: RuntimeError: CUDA out of memory"),
    (KeyError("stage 2"), "Generation failed: KeyError: 'stage 2'"),
], ids=["ValueError", "RuntimeError", "KeyError"])
def test_generate_turns_a_failing_run_into_its_message(tiny_pipe, monkeypatch, released, caplog, error, message):
    """The pipeline failing mid-run (not an input the app checked first): a ValueError names the input as the API
    does, anything else is the short "Generation failed" message with its traceback logged once; the stream is
    closed and the memory released."""
    from imagen_app.app.ui import PipelineHolder, make_generate

    stream = Stream(error)
    monkeypatch.setattr(tiny_pipe, "stream", lambda *args, **kwargs: stream)
    with pytest.raises(gr.Error) as err:
        next(make_generate(PipelineHolder(tiny_pipe))("red heart"))
    assert err.value.message == message and err.value.print_exception is False and err.value.__cause__ is None
    assert len(tracebacks(caplog)) == (0 if isinstance(error, ValueError) else 1)
    assert stream.closed and released == [1]


def test_generate_lets_a_gr_error_from_the_run_through_as_it_is(tiny_pipe, monkeypatch, released, caplog):
    from imagen_app.app.ui import PipelineHolder, make_generate

    original = gr.Error("The model was unloaded.", duration=3)
    stream = Stream(original)
    monkeypatch.setattr(tiny_pipe, "stream", lambda *args, **kwargs: stream)
    with pytest.raises(gr.Error) as err:
        next(make_generate(PipelineHolder(tiny_pipe))("red heart"))
    assert err.value is original and not tracebacks(caplog)
    assert stream.closed and released == [1]


def test_closing_generate_at_a_preview_closes_the_stream_quietly(tiny_pipe, monkeypatch, released, caplog):
    """Stop (or a lost client) closes generate() at a preview: no message, nothing logged, the pipeline's stream
    closed (its work ends at the current step) and the memory released."""
    from imagen_app.app.ui import PipelineHolder, make_generate

    streams = []
    stream = tiny_pipe.stream
    monkeypatch.setattr(tiny_pipe, "stream", lambda *args, **kwargs: streams.append(Stream(events=stream(*args, **kwargs)))
                        or streams[-1])
    run = make_generate(PipelineHolder(tiny_pipe))("red heart", steps_stage_1=5)
    first = generate_named(next(run))
    assert first["status"].startswith("Stage 1/3 · step 1/5") and first["stage_1"] is not None and first["images"] is None
    run.close()  # raises RuntimeError("generator ignored GeneratorExit") if anything swallowed it
    assert streams[0].closed and released == [1] and not tracebacks(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
