"""Editing on tiny random cascades: image-to-image (SDEdit), inpainting (RePaint-style replacement),
super-resolution of a given image, the accepted mask forms and the errors for bad input.
The check on the shipped weights is marked `slow` (run it with `-m slow`)."""
import numpy as np
import pytest
import torch
from PIL import Image

from imagen_app.pipeline.editing import (EditInputs, StageEdit, check_strength, image_tensor, load_image, load_mask,
                                mask_tensor, sdedit_timesteps)
from imagen_app.images import pil_to_tensor
from imagen_app.models.schedules import noise_schedule
from imagen_app.pipeline.pipeline import ImagenPipeline
from imagen_app.training.tiny import tiny_pipeline
from imagen_app.models.unet import ImagenUNet

from conftest import WEIGHTS, edit_named, seeded

TOL = 2 / 127.5  # two 8-bit levels in [-1, 1]: the PNG rounding of the kept region


def init_image(w=40, h=24):
    """A non-square RGB image with some structure: a red block on a light background."""
    arr = np.full((h, w, 3), 230, np.uint8)
    arr[h // 4: 3 * h // 4, w // 5: 4 * w // 5] = (210, 30, 40)
    return Image.fromarray(arr)


def left_half_mask(w=40, h=24) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[:, : w // 2] = True
    return mask


@pytest.fixture(scope="module")
def pipe2():
    """A two-stage random cascade (8 -> 32 px) whose super-resolution stage is residual, as the shipped
    128 -> 512 stage is (its sample is image - upsampled low-res)."""
    p = tiny_pipeline((8, 32), seed=1)
    unet = ImagenUNet.from_config({**p.unet_2.config, "residual": True})
    torch.manual_seed(1)
    for module in unet.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.weight.abs().sum() == 0:
            torch.nn.init.normal_(module.weight, std=0.05)
    pipe = ImagenPipeline(tokenizer=p.tokenizer, text_encoder=p.text_encoder, unet_1=p.unet_1, scheduler_1=p.scheduler_1,
                          unet_2=unet.eval(), scheduler_2=noise_schedule())
    pipe.settings.update(p.settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def regions(out_images, init, mask, size):
    """(max |out - init| over kept pixels, mean |out - init| over repainted pixels) at one stage, in [-1, 1]."""
    x = pil_to_tensor(out_images)
    ref = image_tensor([load_image(init)], size)
    m = mask_tensor([load_mask(mask)], size)
    diff = (x - ref).abs()
    return (diff * (1 - m)).max().item(), (diff * m).sum().item() / (3 * m.sum().item() * x.shape[0])


# ----- image-to-image -----------------------------------------------------------------------------------
def test_strength_one_ignores_the_init_image(pipe2):
    plain = pipe2("red heart", generator=seeded(3))
    a = pipe2("red heart", image=init_image(), strength=1.0, generator=seeded(3))
    b = pipe2("red heart", image=Image.new("L", (9, 70), 0), strength=1.0, generator=seeded(3))
    for k in range(2):
        assert np.array_equal(np.asarray(a.stage_images[k][0]), np.asarray(b.stage_images[k][0]))
        assert np.array_equal(np.asarray(a.stage_images[k][0]), np.asarray(plain.stage_images[k][0]))
    assert a.settings["edit"] == "img2img" and a.settings["strength"] == 1.0


def test_small_strength_stays_near_the_init(pipe2):
    init = init_image()
    ref = image_tensor([init], 8)

    def distance(strength):
        out = pipe2("red heart", image=init, strength=strength, num_inference_steps=10, stop_at_stage=1,
                    generator=seeded(0))
        return (pil_to_tensor(out.images) - ref).abs().mean().item()

    near, far = distance(0.1), distance(1.0)
    assert near < 0.25 and near < far / 2, (near, far)


def test_strength_runs_the_last_part_of_the_schedule(pipe2):
    events = list(pipe2.stream("panda", image=init_image(), strength=0.5, num_inference_steps=[4, 2], generator=seeded(0)))
    steps = [(e.stage, e.step, e.total_steps) for e in events if not e.is_final]
    assert steps == [(1, 1, 2), (1, 2, 2), (2, 1, 2), (2, 2, 2)]  # stage 1: half of 4 steps; SR stage: all
    assert events[-1].is_final and events[-1].output.images[0].size == (32, 32)
    sched = pipe2.make_scheduler(0, "ddim")
    sched.set_timesteps(10)
    assert len(sdedit_timesteps(sched, 0.8)[0]) == 8 and len(sdedit_timesteps(sched, 0.01)[0]) == 1
    assert torch.equal(sdedit_timesteps(sched, 1.0)[0], sched.timesteps)


# ----- inpainting ---------------------------------------------------------------------------------------
def test_inpainting_keeps_the_unmasked_pixels_of_every_stage(tiny_pipe):
    init, mask = init_image(), left_half_mask()
    out = tiny_pipe("blue heart", image=init, mask_image=mask, num_inference_steps=[3, 2, 1], generator=seeded(0))
    assert out.settings["edit"] == "inpaint" and out.settings["strength"] == 1.0
    for images, size in zip(out.stage_images, tiny_pipe.stage_resolutions):
        kept, repainted = regions(images, init, mask, size)
        assert kept <= TOL, (size, kept)
        assert repainted > 0.1, (size, repainted)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm++", "euler", "euler-ancestral", "unipc"])
def test_inpainting_with_every_scheduler_and_a_residual_stage(pipe2, scheduler):
    init, mask = init_image(), left_half_mask()
    out = pipe2("blue heart", image=init, mask_image=mask, scheduler=scheduler, num_inference_steps=[4, 2],
                generator=seeded(0))
    for images, size in zip(out.stage_images, pipe2.stage_resolutions):
        kept, repainted = regions(images, init, mask, size)
        assert kept <= TOL and repainted > 0.1, (scheduler, size, kept, repainted)


def test_inpainting_with_strength_and_a_batch(pipe2):
    init, mask = init_image(), left_half_mask()
    out = pipe2("blue heart", image=init, mask_image=mask, strength=0.5, num_images_per_prompt=2,
                num_inference_steps=[4, 2], generator=[seeded(0), seeded(1)])
    assert len(out.images) == 2 and out.settings["strength"] == 0.5
    for images, size in zip(out.stage_images, pipe2.stage_resolutions):
        kept, repainted = regions(images, init, mask, size)
        assert kept <= TOL and repainted > 0.02, (size, kept, repainted)


def test_inpainting_previews_stream_with_the_kept_region(pipe2):
    init, mask = init_image(), left_half_mask()
    events = list(pipe2.stream("blue heart", image=init, mask_image=mask, num_inference_steps=[2, 1], generator=seeded(0)))
    assert [(e.stage, e.step) for e in events[:-1]] == [(1, 1), (1, 2), (2, 1)]
    for e in events[:-1]:
        size = pipe2.stage_resolutions[e.stage - 1]
        assert e.preview.size == (size, size)
        assert regions(e.previews, init, mask, size)[0] <= TOL


# ----- super-resolution of a given image --------------------------------------------------------------
def test_upscale_a_given_image_of_any_size(pipe2):
    out = pipe2("red heart", image=init_image(17, 23), start_at_stage=2, generator=seeded(0))
    assert len(out.stage_images) == 1 and out.images[0].size == (32, 32)
    events = list(pipe2.stream("red heart", image=Image.new("RGBA", (8, 8)), start_at_stage=2, num_inference_steps=2,
                               generator=seeded(0)))
    assert [(e.stage, e.step) for e in events] == [(2, 1), (2, 2), (2, 2)] and events[-1].is_final


# ----- masks in every accepted form -------------------------------------------------------------------
def mask_forms(tmp_path):
    h, w = 24, 40
    b = left_half_mask(w, h)
    gray = Image.fromarray(b.astype(np.uint8) * 255)
    painted = np.zeros((h, w, 4), np.uint8)  # an editor's brush layer: transparent, strokes opaque (any colour)
    painted[b] = (20, 200, 90, 255)
    opaque = np.zeros((h, w, 4), np.uint8)  # an RGBA file without transparency: its RGB
    opaque[..., 3] = 255
    opaque[b, :3] = 255
    path = tmp_path / "mask.png"
    gray.save(path)
    return {
        "L": gray, "1": gray.convert("1"), "RGB": gray.convert("RGB"), "RGBA alpha": Image.fromarray(painted, "RGBA"),
        "RGBA opaque": Image.fromarray(opaque, "RGBA"), "bool array": b, "uint8 array": b.astype(np.uint8) * 255,
        "float array": b.astype(np.float32), "RGB array": np.repeat(b[..., None], 3, -1).astype(np.uint8) * 255,
        "bool tensor": torch.from_numpy(b), "float tensor (1, H, W)": torch.from_numpy(b).float()[None],
        "path": str(path), "pathlib": path, "larger L": gray.resize((400, 240), Image.NEAREST),
    }


def test_masks_in_every_accepted_form(tmp_path):
    expected = left_half_mask()
    for name, form in mask_forms(tmp_path).items():
        mask = load_mask(form)
        assert mask.mode == "L", name
        got = np.asarray(mask.resize((40, 24), Image.NEAREST)) > 127
        assert np.array_equal(got, expected), name
        for size in (8, 32):
            m = mask_tensor([mask], size)
            assert m.shape == (1, 1, size, size) and m[..., :, : size // 2].eq(1).all() and m[..., :, size // 2:].eq(0).all(), name


def test_a_mask_of_another_size_and_mode_in_the_pipeline(pipe2):
    init = init_image()
    painted = np.zeros((7, 13, 4), np.uint8)
    painted[:, :6] = (255, 0, 0, 255)  # the left 6 of 13 columns painted
    out = pipe2("blue heart", image=init, mask_image=Image.fromarray(painted, "RGBA"), num_inference_steps=[2, 1],
                generator=seeded(0))
    kept, _ = regions(out.stage_images[1], init, Image.fromarray(painted, "RGBA"), 32)
    assert kept <= TOL


def test_init_images_in_any_mode():
    rgba = Image.new("RGBA", (10, 6), (0, 0, 0, 0))  # transparent: the white background
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("L", (3, 3), 128)).mode == "RGB"
    assert load_image(np.zeros((5, 7, 3), np.uint8)).size == (7, 5)
    t = image_tensor([load_image(init_image())], 8)
    assert t.shape == (1, 3, 8, 8) and -1 <= t.min() and t.max() <= 1
    prepared = EditInputs.prepare(torch.zeros(2, 3, 16, 16), None, None, batch=2)  # the pipeline's tensors, [-1, 1]
    assert prepared.strength == 0.8 and prepared.mode == "img2img" and prepared.images[0].getpixel((0, 0)) == (128, 128, 128)
    assert EditInputs.prepare(init_image(), left_half_mask(), None, batch=1).strength == 1.0


def test_stage_edit_replacement_is_exact_after_the_last_step(pipe2):
    sched = pipe2.make_scheduler(0, "ddim")
    sched.set_timesteps(4)
    init = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    edit = StageEdit(init=init, mask=mask)
    timesteps, x = edit.start(sched, torch.randn(1, 3, 8, 8))
    x = edit.after_step(sched, torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), timesteps, len(timesteps) - 1)
    assert torch.equal(x[..., 4:], init[..., 4:])


# ----- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [0, -0.1, 1.5, float("nan"), "0.5", True, None])
def test_strength_out_of_range(strength):
    with pytest.raises(ValueError, match="strength"):
        check_strength(strength)


def test_bad_inputs_give_a_clear_error(pipe2, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    cases = [
        (dict(image=42), "image must be an image"),
        (dict(image="no/such/file.png"), "no such file"),
        (dict(image=str(text)), "not an image file"),
        (dict(image=np.zeros((4, 4, 2))), r"shape \(H, W\)"),
        (dict(image=init_image(), mask_image=np.zeros((24, 40), bool)), "all black: there is nothing to repaint"),
        (dict(image=init_image(), mask_image=Image.new("RGBA", (8, 8), (255, 255, 255, 0))), "nothing to repaint"),
        (dict(image=init_image(), mask_image="mask.txt"), "mask_image: no such file"),
        (dict(image=init_image(), strength=0.0), "strength"),
        (dict(image=init_image(), strength=2), "strength"),
        (dict(image=[init_image()] * 3, num_images_per_prompt=2), "3 images for a batch of 2"),
        (dict(mask_image=left_half_mask()), "give `image` with start_at_stage=1"),
        (dict(image=init_image(), mask_image=left_half_mask(), start_at_stage=2), "start_at_stage=1"),
        (dict(start_at_stage=2), "needs `image`"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            next(pipe2.stream("red heart", **kwargs))


# ----- the shipped model --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("prompt, edit_prompt, box, repaints", [
    ("woman firefighter: dark skin tone", "woman firefighter: light skin tone", (0.25, 0.1875, 0.75, 0.6875), True),
    # The shipped model draws no blue heart (plain "blue heart" gives a red one): the half stays red.
    ("red heart", "blue heart", (0.0, 0.0, 0.5, 1.0), False),
])
def test_shipped_model_keeps_the_unmasked_region(prompt, edit_prompt, box, repaints):
    """The README's figures (`python -m pytest -m slow -s tests/pipeline/test_editing.py`)."""
    from imagen_app.evaluation.edit_check import edit_check

    report = edit_check(WEIGHTS, prompt, edit_prompt, box=box)
    print(report)
    for stage in report["stages"]:
        assert stage["kept_mean_abs"] < 0.005 and stage["kept_max_abs"] < 0.01, stage
        assert not repaints or stage["repainted_mean_abs"] > 0.05, stage


# ----- the command line -------------------------------------------------------------------------------
def test_cli_generate_with_image_and_mask_and_upscale(pipe2, tmp_path, capsys):
    from imagen_app.cli import main

    weights = tmp_path / "weights"
    pipe2.save_pretrained(weights)
    init, mask = save(init_image(), tmp_path / "in.png"), save(Image.fromarray(left_half_mask()), tmp_path / "mask.png")
    out = tmp_path / "edited.png"
    assert main(["generate", "blue heart", "--weights", str(weights), "--image", init, "--mask", mask,
                 "--strength", "0.9", "--steps", "2", "--out", str(out)]) == 0
    kept, _ = regions([Image.open(out)], init, mask, 32)
    assert kept <= TOL and (tmp_path / "edited_stage1.png").exists()
    assert main(["upscale", save(init_image(8, 8), tmp_path / "small.png"), "--prompt", "red heart", "--weights",
                 str(weights), "--out", str(tmp_path / "big.png")]) == 0
    assert Image.open(tmp_path / "big.png").size == (32, 32)
    assert main(["generate", "red heart", "--weights", str(weights), "--image", init, "--strength", "1.5"]) == 2
    assert "strength" in capsys.readouterr().err


# ----- the app: Edit and Upscale tabs over the API (gradio_client, handle_file) ----------------------------
def save(image, path):
    image.save(path)
    return str(path)


def test_edit_endpoint_inpaints_and_streams(client, tmp_path):
    from gradio_client import handle_file

    init = init_image(128, 128)
    layer = np.zeros((128, 128, 4), np.uint8)  # an editor's brush layer: the left half painted
    layer[:, :64] = (255, 0, 255, 200)
    editor = dict(background=handle_file(save(init, tmp_path / "init.png")),
                  layers=[handle_file(save(Image.fromarray(layer, "RGBA"), tmp_path / "layer.png"))], composite=None)
    job = client.submit(editor, "blue heart", strength=1.0, seed=1, api_name="/edit")
    updates = list(job)
    statuses = [edit_named(u, 1, 3)["status"] for u in updates]
    assert any(s.startswith("Inpainting: stage 1/3") for s in statuses) and statuses[-1].startswith("Done")
    result = edit_named(job.result(), 1, 3)
    sizes = [np.asarray(Image.open(result[f"stage_{k}"])).shape[:2] for k in (1, 2, 3)]
    assert sizes == [(8, 8), (32, 32), (128, 128)]
    out = Image.open(result["image"])
    kept, repainted = regions([out], init, Image.fromarray(layer, "RGBA"), 128)
    assert kept <= TOL and repainted > 0.05
    assert result["settings"]["edit"] == "inpaint" and result["settings"]["prompt"] == "blue heart"


def test_edit_endpoint_without_a_mask_is_image_to_image(client, tmp_path):
    from gradio_client import handle_file

    editor = dict(background=handle_file(save(init_image(), tmp_path / "init.png")), layers=[], composite=None)
    result = edit_named(client.predict(editor, "panda", strength=0.5, seed=0, last_stage=2, api_name="/edit"), 1, 3)
    assert result["settings"]["edit"] == "img2img" and result["settings"]["strength"] == 0.5
    assert np.asarray(Image.open(result["image"])).shape[:2] == (32, 32) and result["stage_3"] is None


def test_upscale_endpoint(client, tmp_path):
    from gradio_client import handle_file

    job = client.submit(handle_file(save(init_image(10, 10), tmp_path / "small.png")), "red heart", api_name="/upscale")
    statuses = [edit_named(u, 2, 3)["status"] for u in job]
    assert any("stage 2/3" in s for s in statuses) and any("stage 3/3" in s for s in statuses)
    result = edit_named(job.result(), 2, 3)
    images = [result["stage_2"], result["stage_3"], result["image"]]
    assert [np.asarray(Image.open(path)).shape[:2] for path in images] == [(32, 32), (128, 128), (128, 128)]


@pytest.mark.parametrize("api, args, kwargs, message", [
    ("/edit", ("no image",), {}, "Upload an image"),
    ("/edit", ("init",), dict(strength=0), "strength"),
    ("/edit", ("init",), dict(seed=-1), "seed"),
    ("/edit", ("init",), dict(prompt="x" * 5000), "too long"),
    ("/upscale", (None, "red heart"), {}, "Upload an image"),
])
def test_bad_edit_input_is_a_message(client, tmp_path, api, args, kwargs, message):
    from gradio_client import handle_file

    path = save(init_image(), tmp_path / "init.png")
    if api == "/edit":
        editor = dict(background=handle_file(path) if args[0] == "init" else None, layers=[], composite=None)
        args = (editor,) if "prompt" in kwargs else (editor, "red heart")
    with pytest.raises(Exception) as err:
        client.predict(*args, **kwargs, api_name=api)
    assert message in str(err.value) and "Traceback" not in str(err.value)
