"""Issue 30, item 1: damaged images sent to /edit and /upscale. Each gets a message that names the image (or the
mask), says what is wrong and what is accepted (formats, the largest size), with one log line and no traceback;
before, 31 of 78 such requests got Gradio's "The upstream Gradio app has raised an exception" and the log 51
tracebacks. Also: /edit names its guidance input as /generate does (guidance_scale_stage_1).

The files are made here, small and fast: a 16000 x 16000 PNG is a real, complete file of 1-bit rows that compress
to a few kilobytes (its decoding, which the app must never start, would take 256 megapixels)."""
import io
import json
import logging
import os
import struct
import time
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import edit_named

gradio_client = pytest.importorskip("gradio_client")

ACCEPTED = "Accepted: PNG, JPEG, WebP, GIF or BMP files of at most 4096 x 4096 pixels."
UPSTREAM = "upstream Gradio app"  # Gradio's generic text for an exception it was not told about


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def blank_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of width x height white pixels, written without Pillow (its rows of zeros
    compress to almost nothing, so a 16000 x 16000 one is a few tens of kilobytes made in a fraction of a second)."""
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter byte 0, then the row's bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def good_png(size: int = 32, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode).save(buf, "PNG")
    return buf.getvalue()


# name: (the file's bytes, words the message must contain: what is wrong)
DAMAGED = {
    "random.png": (np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
                   "is not an image file"),
    "empty.png": (b"", "is an empty file"),
    "half.png": (good_png()[: len(good_png()) // 2], "is cut short"),
    "notes.png": (b"shopping list: eggs, milk\nthis is not an image\n", "is a text file"),
    "huge.png": (blank_png(16000, 16000), "is too large: 16000 x 16000 pixels"),
    "wide.png": (blank_png(5000, 8), "is too large: 5000 x 8 pixels"),  # below Pillow's own bomb limit
    "drawing.svg": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
                    b'<rect width="32" height="32" fill="red"/></svg>', "SVG (vector graphics) is not accepted"),
    "photo.tiff": (None, "is a TIFF file: TIFF is not accepted"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    paths = {}
    for name, (data, _) in DAMAGED.items():
        if data is None:  # a real TIFF (a format Pillow reads, not accepted here)
            buf = io.BytesIO()
            Image.open(io.BytesIO(good_png())).save(buf, "TIFF")
            data = buf.getvalue()
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    (folder / "good.png").write_bytes(good_png())
    paths["good.png"] = str(folder / "good.png")
    return paths


@pytest.fixture()
def refusals(caplog):
    """The app's log records of refused inputs ("input error: ..." warnings), and whether any carries a traceback."""
    caplog.set_level(logging.WARNING, logger="imagen_app.ui")

    def records():
        return [r for r in caplog.records if r.name == "imagen_app.ui" and r.getMessage().startswith("input error")]

    return records


def refused(client, **call) -> str:
    t0 = time.time()
    with pytest.raises(Exception) as err:
        client.predict(**call)
    assert time.time() - t0 < 10
    return str(err.value)


# ----- the reader itself (imagen_app/images.py) ---------------------------------------------------------------
def test_read_image_names_what_is_wrong_and_what_is_accepted(files):
    from imagen_app.images import ImageInputError, read_image

    for name, (_, problem) in DAMAGED.items():
        with pytest.raises(ImageInputError) as err:
            read_image(files[name], "The mask")
        message = str(err.value)
        assert message.startswith(f"The mask ({name}) ") and problem in message and message.endswith(ACCEPTED), message
    for value, problem in [(5, "must be an image file, got int 5"), ("", "no such file"), (None, "got NoneType"),
                           ({"path": None}, "without a file path"), (np.zeros((4, 4, 2)), "shape"),
                           (np.full((4, 4), 300), "outside 0..255"), (np.full((4, 4), np.nan), "floats")]:
        with pytest.raises(ImageInputError, match="^The image") as err:
            read_image(value)
        assert problem in str(err.value) and str(err.value).endswith(ACCEPTED), str(err.value)


def test_read_image_checks_the_size_before_decoding(files):
    """The 16000 x 16000 PNG (256 megapixels) is refused from its header: at once, nothing decoded."""
    from imagen_app.images import ImageInputError, read_image

    t0 = time.time()
    with pytest.raises(ImageInputError, match="16000 x 16000"):
        read_image(files["huge.png"])
    assert time.time() - t0 < 0.5
    with pytest.raises(ImageInputError, match="5000 x 5000"):
        read_image(Image.new("1", (5000, 5000)))  # a PIL image too large
    assert read_image(blank_png(4096, 4)).size == (4096, 4)  # the largest side accepted


def test_read_image_accepts_what_gradio_hands_over(files):
    from imagen_app.images import read_image

    pil = Image.open(files["good.png"]).convert("RGB")
    expected = np.asarray(pil)
    with open(files["good.png"], "rb") as f:
        data = f.read()
    import base64

    for source in [pil, expected, files["good.png"], data, {"path": files["good.png"], "orig_name": "x.png"},
                   "data:image/png;base64," + base64.b64encode(data).decode()]:
        image = read_image(source)
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected)
    for fmt in ["JPEG", "WEBP", "GIF", "BMP"]:
        buf = io.BytesIO()
        pil.save(buf, fmt)
        assert read_image(buf.getvalue()).size == (32, 32)
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # transparent pixels land on white, as the pipeline's
    assert read_image(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert read_image(transparent, mode="RGBA").getpixel((0, 0)) == (255, 0, 0, 0)


# ----- through the API: /upscale and /edit ----------------------------------------------------------------------
def test_damaged_files_sent_to_upscale_and_edit_are_named(client, files, refusals, capfd):
    from gradio_client import handle_file

    capfd.readouterr()
    good = handle_file(files["good.png"])
    wrong, calls = [], 0
    for name, (_, problem) in DAMAGED.items():
        bad = handle_file(files[name])
        cases = [("The image to upscale (image", dict(image=bad, prompt="red heart", api_name="/upscale")),
                 ("The image to edit (image", dict(image=dict(background=bad, layers=[], composite=None),
                                                  prompt="red heart", api_name="/edit")),
                 ("The mask (image's layer 1", dict(image=dict(background=good, layers=[bad], composite=None),
                                                   prompt="red heart", api_name="/edit"))]
        for who, call in cases:
            message = refused(client, **call)
            calls += 1
            if not (message.startswith(f"{who}: {name})") and problem in message and ACCEPTED in message
                    and UPSTREAM not in message):
                wrong.append((name, call["api_name"], message))
    assert not wrong, wrong
    logged = refusals()
    assert len(logged) == calls and not any(r.exc_info for r in logged)  # one line per refusal, no traceback
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err


@pytest.mark.parametrize("value, words", [("hello", "got str 'hello'"), (5, "got int 5"), (2.5, "got float 2.5"),
                                          ([1, 2], "got list"), ({"url": "http://example.com/a.png"}, "got dict")])
def test_a_string_or_a_number_where_the_image_goes_is_named(client, files, refusals, capfd, value, words):
    from gradio_client import handle_file

    capfd.readouterr()
    messages = [
        refused(client, image=value, prompt="red heart", api_name="/upscale"),
        refused(client, image=value, prompt="red heart", api_name="/edit"),
        refused(client, image=dict(background=value, layers=[], composite=None), prompt="red heart", api_name="/edit"),
        refused(client, image=dict(background=handle_file(files["good.png"]), layers=[value], composite=None),
                prompt="red heart", api_name="/edit"),
    ]
    names = ["The image to upscale (image)", "The image to edit (image)", "The image to edit (image's background)",
             "The mask (image's layer 1)"]
    for name, message in zip(names, messages):
        assert message.startswith(f"{name} must be ") and words in message, message
        assert "Accepted images: PNG, JPEG, WebP, GIF or BMP" in message and UPSTREAM not in message, message
    assert len(refusals()) == 4
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err


def test_a_path_on_the_server_is_not_read(app_url, refusals):
    """Raw JSON can name any file on the server as the image: only uploads to the app are read."""
    body = json.dumps({"data": [{"path": os.path.abspath(__file__), "meta": {"_type": "gradio.FileData"}},
                                "red heart", 0, None, None]}).encode()
    req = urllib.request.Request(app_url + "gradio_api/call/upscale", data=body,
                                 headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(app_url + f"gradio_api/call/upscale/{event_id}", timeout=60).read().decode()
    assert "event: error" in stream and "must be a file uploaded to this app" in stream, stream
    assert len(refusals()) == 1


def test_good_images_still_work_and_a_file_alone_is_explained(client, files):
    from gradio_client import handle_file

    good = handle_file(files["good.png"])
    result = edit_named(client.predict(good, "red heart", api_name="/upscale"), 2)
    assert result["status"].startswith("Done") and Image.open(result["image"]).size == (128, 128)
    message = refused(client, image=good, prompt="red heart", api_name="/edit")  # the editor's value is a dict
    assert "got a single file: put it in 'background'" in message and UPSTREAM not in message


def test_direct_calls_read_images_the_same_way(tiny_pipe, files):
    """The tabs' functions, called from Python with a path, an array or a damaged file, read through the same
    function: the same messages."""
    import gradio as gr
    from imagen_app.app.edit_tabs import make_edit, make_upscale
    from imagen_app.app.ui import PipelineHolder

    holder = PipelineHolder(tiny_pipe)
    with pytest.raises(gr.Error) as err:
        list(make_upscale(holder)(files["half.png"], "red heart"))
    assert err.value.message.startswith("The image to upscale (image: half.png) is cut short")
    with pytest.raises(gr.Error) as err:
        list(make_edit(holder)({"background": files["good.png"], "layers": [files["drawing.svg"]], "composite": None},
                               "red heart"))
    assert err.value.message.startswith("The mask (image's layer 1: drawing.svg) is an SVG drawing")
    *_, final = make_upscale(holder)(np.zeros((10, 10, 3), np.uint8), "red heart")  # an array, as before
    assert edit_named(final, 2)["image"].size == (128, 128)


# ----- /edit's guidance input has /generate's name ----------------------------------------------------------------
def test_edit_names_its_guidance_as_generate_does(client, files):
    from gradio_client import handle_file

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    edit_inputs = [p["parameter_name"] for p in api["/edit"]["parameters"]]
    assert "guidance_scale_stage_1" in edit_inputs and "guidance_scale" not in edit_inputs
    assert "guidance_scale_stage_1" in [p["parameter_name"] for p in api["/generate"]["parameters"]]
    editor = dict(background=handle_file(files["good.png"]), layers=[], composite=None)
    result = edit_named(client.predict(editor, "red heart", strength=0.5, guidance_scale_stage_1=5.5, last_stage=1,
                                       api_name="/edit"), 1)
    assert result["settings"]["guidance_scale"] == [5.5]
    message = refused(client, image=editor, prompt="red heart", guidance_scale_stage_1="high", api_name="/edit")
    assert "guidance_scale_stage_1" in message and UPSTREAM not in message
