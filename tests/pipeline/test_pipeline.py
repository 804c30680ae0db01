import inspect
import json
import math

import numpy as np
import pytest
import torch

from imagen_app import ImagenPipeline
from imagen_app.pipeline.schedulers import SCHEDULERS
from conftest import WEIGHTS, seeded


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_three_stage_cascade_sizes(tiny_pipe):
    out = tiny_pipe("red heart", generator=seeded())
    assert [imgs[0].size for imgs in out.stage_images] == [(8, 8), (32, 32), (128, 128)]
    assert out.images[0].size == (128, 128)
    assert out.settings["num_inference_steps"] == [3, 3, 3]


def test_seed_reproducible_and_different(tiny_pipe):
    a = tiny_pipe("red heart", generator=seeded(1)).images[0]
    b = tiny_pipe("red heart", generator=seeded(1)).images[0]
    c = tiny_pipe("red heart", generator=seeded(2)).images[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_save_and_load_identical(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    assert list(tmp_path.rglob("*.safetensors"))
    loaded = ImagenPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.num_stages == 3
    a = tiny_pipe("blue heart", generator=seeded(3))
    b = loaded("blue heart", generator=seeded(3))
    for sa, sb in zip(a.stage_images, b.stage_images):
        assert np.array_equal(pixels(sa[0]), pixels(sb[0]))


def test_stream_events_in_order(tiny_pipe):
    steps = [2, 3, 4]
    events = list(tiny_pipe.stream("panda", num_inference_steps=steps, generator=seeded()))
    expected = [(k + 1, i + 1) for k, s in enumerate(steps) for i in range(s)]
    assert [(e.stage, e.step) for e in events[:-1]] == expected
    sizes = {1: (8, 8), 2: (32, 32), 3: (128, 128)}
    for e in events[:-1]:
        assert not e.is_final and e.total_steps == steps[e.stage - 1] and e.preview.size == sizes[e.stage]
    assert events[-1].is_final and events[-1].output.images[0].size == (128, 128)


def test_stream_break_early_leaves_pipeline_usable(tiny_pipe):
    reference = tiny_pipe("panda", generator=seeded(5)).images[0]
    stream = tiny_pipe.stream("panda", generator=seeded(5))
    for event in stream:
        if event.stage == 2:
            break
    stream.close()
    again = tiny_pipe("panda", generator=seeded(5)).images[0]
    assert np.array_equal(pixels(reference), pixels(again))


def test_stop_at_stage(tiny_pipe):
    out = tiny_pipe("panda", stop_at_stage=2, generator=seeded())
    assert len(out.stage_images) == 2 and out.images[0].size == (32, 32)


def test_guidance_one_is_conditional_branch(tiny_pipe):
    """w = 1 gives eps_uncond + 1 * (eps_cond - eps_uncond) = eps_cond: the same as the conditional
    branch alone (which the pipeline runs without the unconditional half)."""
    unet = tiny_pipe.unet_1
    emb, mask = tiny_pipe.prompt_encoder.encode(["", "red heart"])
    x = torch.randn(1, 3, 8, 8)
    both = unet(torch.cat([x, x]), 500, emb, mask).sample
    from imagen_app.pipeline.guidance import classifier_free_guidance

    guided = classifier_free_guidance(both[:1], both[1:], 1.0)
    cond_alone = unet(x, 500, emb[1:], mask[1:]).sample
    torch.testing.assert_close(guided, cond_alone, atol=1e-5, rtol=1e-5)
    # and end to end: w=1 differs from w=5 (so guidance is really applied)
    a = tiny_pipe("red heart", guidance_scale=1.0, stop_at_stage=1, generator=seeded()).images[0]
    b = tiny_pipe("red heart", guidance_scale=5.0, stop_at_stage=1, generator=seeded()).images[0]
    assert not np.array_equal(pixels(a), pixels(b))


def test_padding_does_not_change_unet_output(tiny_pipe):
    unet = tiny_pipe.unet_1
    emb, mask = tiny_pipe.prompt_encoder.encode(["red heart"])
    padded = torch.cat([emb, torch.randn(1, 5, emb.shape[-1])], dim=1)  # garbage in the padded slots
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], dim=1)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(unet(x, 300, emb, mask).sample, unet(x, 300, padded, padded_mask).sample,
                               atol=1e-5, rtol=1e-5)


def test_dynamic_thresholding_bounds_and_effect(tiny_pipe):
    from imagen_app.pipeline.guidance import dynamic_threshold

    x0 = torch.randn(4, 3, 16, 16) * 3
    out = dynamic_threshold(x0, 99.5, max_value=10.0)
    assert out.abs().max() <= 1.0 + 1e-6
    s = torch.quantile(x0.abs().reshape(4, -1), 0.995, dim=1)
    # values inside [-s, s] are only rescaled
    inside = (x0.abs() < s.view(-1, 1, 1, 1))
    torch.testing.assert_close(out[inside], (x0 / s.view(-1, 1, 1, 1))[inside])
    # s >= 1: an x0 already within [-1, 1] is unchanged
    small = torch.rand(2, 3, 4, 4) * 1.8 - 0.9
    torch.testing.assert_close(dynamic_threshold(small, 99.5, 10.0), small)
    # at a high guidance scale it changes the result, for a scheduler with and without its own thresholding
    for name in ["ddim", "euler-ancestral"]:
        on = tiny_pipe("red heart", guidance_scale=30.0, dynamic_thresholding_percentile=90, scheduler=name,
                       stop_at_stage=1, generator=seeded())
        off = tiny_pipe("red heart", guidance_scale=30.0, dynamic_thresholding_percentile=0, scheduler=name,
                        stop_at_stage=1, generator=seeded())
        assert not np.array_equal(pixels(on.images[0]), pixels(off.images[0])), name


def test_events_carry_x0_and_make_previews_lazily(tiny_pipe):
    """Events carry the predicted x0 as a tensor; a PIL preview is made only when asked for. With dynamic
    thresholding x0 stays in [-1, 1]; without it, at a high guidance scale, it does not."""
    def x0s(percentile):
        events = list(tiny_pipe.stream("red heart", guidance_scale=30.0, stop_at_stage=1, scheduler="euler",
                                       dynamic_thresholding_percentile=percentile, generator=seeded()))
        assert all(e._previews is None for e in events[:-1])  # nobody asked for a preview
        assert events[0].preview.size == (8, 8) and events[0]._previews is not None
        return torch.stack([e.x0 for e in events[:-1]])

    assert x0s(99.5).abs().max() <= 1.0 + 1e-5
    assert x0s(0).abs().max() > 1.5


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs(tiny_pipe, name):
    out = tiny_pipe("flag: japan", scheduler=name, num_inference_steps=[3, 2, 2], generator=seeded())
    arr = pixels(out.images[0])
    assert arr.shape == (128, 128, 3) and arr.std() > 0


def test_v_prediction_pipeline_runs():
    from imagen_app.training.tiny import tiny_pipeline

    pipe = tiny_pipeline(resolutions=(8, 32), prediction_type="v_prediction")
    out = pipe("panda", scheduler="euler-ancestral", generator=seeded())
    assert out.images[0].size == (32, 32)


def test_per_stage_sequences_and_negative_prompt(tiny_pipe):
    out = tiny_pipe(["red heart", "panda"], negative_prompt="blue heart", num_inference_steps=[2, 1, 1],
                    guidance_scale=[4.0, 2.0, 1.0], scheduler=["ddim", "dpm++", "unipc"], num_images_per_prompt=2,
                    generator=seeded())
    assert len(out.images) == 4
    assert out.settings["scheduler"] == ["ddim", "dpm++", "unipc"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_inference_steps=-1), "num_inference_steps"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=2.5), "whole number"),
    (dict(guidance_scale=math.nan), "finite"),
    (dict(guidance_scale="big"), "number"),
    (dict(guidance_scale=[1.0, 2.0]), "one per stage"),
    (dict(num_inference_steps=[1, 2, 3, 4]), "one per stage"),
    (dict(scheduler="warp-drive"), "unknown scheduler"),
    (dict(noise_aug_level=1.5), "noise_aug_level"),
    (dict(dynamic_thresholding_percentile=10), "dynamic_thresholding_percentile"),
    (dict(stop_at_stage=4), "stop_at_stage"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
])
def test_bad_arguments_raise_clear_value_error(tiny_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe("red heart", **kwargs)


def test_bad_prompt_types(tiny_pipe):
    with pytest.raises(ValueError, match="prompt"):
        tiny_pipe(None)
    with pytest.raises(ValueError, match="negative_prompt"):
        tiny_pipe(["a", "b"], negative_prompt=["x"])


def test_a_prompt_with_a_lone_surrogate_is_refused_before_any_denoising(tiny_pipe):
    bad = "red \ud800 heart"  # a lone surrogate: no UTF-8 for it, so the run's outputs could not be written
    for kwargs, name in [(dict(prompt=bad), "prompt"), (dict(prompt="red heart", negative_prompt=bad), "negative prompt"),
                         (dict(prompt=["red heart", bad]), "prompt 2")]:
        events = tiny_pipe.stream(**kwargs)
        with pytest.raises(ValueError, match=f"The {name} contains a character that is not valid Unicode text"):
            next(events)  # the first step's event would come first without the check
        with pytest.raises(ValueError, match="lone surrogate"):
            tiny_pipe(**kwargs)
    with pytest.raises(ValueError, match="not valid Unicode text"):
        tiny_pipe.check_prompt(bad)
    assert tiny_pipe("red heart", generator=seeded()).images[0].size == (128, 128)  # and the pipeline still works


def test_empty_prompt_is_unconditional(tiny_pipe):
    out = tiny_pipe("", generator=seeded())
    assert out.images[0].size == (128, 128)
    assert out.prompt_reports[0].is_unconditional


@pytest.fixture(scope="module")
def v_pipe():
    from imagen_app.training.tiny import tiny_pipeline

    return tiny_pipeline(prediction_type="v_prediction")


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_v_samplers_start_from_pure_noise(v_pipe, name):
    # "trailing" spacing: the first sampling step is the last training timestep, where x_T is pure noise
    # (with diffusers' default "leading" spacing an 8-step sampler starts at t = 888 and leaves grain).
    for stage in range(3):
        sched = v_pipe.make_scheduler(stage, name)
        sched.set_timesteps(8)
        assert int(sched.timesteps[0]) == sched.config.num_train_timesteps - 1
    final = list(v_pipe.stream("red heart", scheduler=name, num_inference_steps=2, generator=seeded()))[-1]
    assert torch.isfinite(final.x0).all() and final.x0.std() > 0  # the float image, before it becomes pixels


def x0_zero_unet(unet, alphas_cumprod):
    """Makes an epsilon U-Net predict x0 = 0 at every step: eps = x_t / sqrt(1 - alpha_bar_t)."""
    def forward(sample, timestep, *args, return_dict=True, **kwargs):
        t = torch.as_tensor(timestep).long().reshape(-1)
        out = sample / (1 - alphas_cumprod[t]).sqrt().to(sample.dtype).reshape(-1, 1, 1, 1)
        return (out,)
    unet.forward = forward
    return unet


def test_residual_stage_adds_its_sample_to_the_bicubic_upsample():
    from imagen_app.training.tiny import tiny_pipeline
    from imagen_app.models.unet import upsample_lowres

    pipe = tiny_pipeline()
    unet = pipe.unet_2
    unet.register_to_config(residual=True)
    x0_zero_unet(unet, pipe.scheduler_2.alphas_cumprod)
    lowres = torch.rand(2, 3, 8, 8, generator=seeded()) * 1.6 - 0.8
    kwargs = dict(image=lowres, start_at_stage=2, stop_at_stage=2, scheduler="ddim", num_inference_steps=4,
                  noise_aug_level=0.3, generator=seeded())
    out = pipe(["red heart", "panda"], **kwargs)
    expected = (upsample_lowres(lowres, 32).clamp(-1, 1) + 1) * 127.5  # the clean low-res, not the augmented one
    got = torch.from_numpy(np.stack([pixels(im) for im in out.images])).permute(0, 3, 1, 2).float()
    assert (got - expected).abs().max() <= 1.0
    # The same U-Net as an ordinary stage predicts the image itself: x0 = 0 is flat grey, not the upsample.
    unet.register_to_config(residual=False)
    plain = pixels(pipe(["red heart", "panda"], **kwargs).images[0])
    assert np.abs(plain - 127.5).max() <= 1.0


def test_residual_needs_a_lowres_stage():
    from imagen_app.models.unet import ImagenUNet

    with pytest.raises(ValueError, match="super-resolution"):
        ImagenUNet(residual=True)


# ----- settings: one resolver ------------------------------------------------------------------------------
def test_resolve_settings_fills_from_the_pipeline_defaults(tiny_pipe):
    stages = tiny_pipe.resolve_settings()
    assert [s.stage for s in stages] == [1, 2, 3]
    assert [s.num_inference_steps for s in stages] == [3, 3, 3]
    assert [s.guidance_scale for s in stages] == [3.0, 2.0, 1.0]  # tiny_pipe.settings, not the class defaults
    assert {s.scheduler for s in stages} == {tiny_pipe.settings["scheduler"]}
    given = tiny_pipe.resolve_settings(guidance_scale=[5, None, 1.5], num_inference_steps=2.0, stop_at_stage=3.0)
    assert [s.guidance_scale for s in given] == [5.0, 2.0, 1.5]  # None in a list: that stage's default
    assert [s.num_inference_steps for s in given] == [2, 2, 2] and isinstance(given[0].num_inference_steps, int)
    assert len(tiny_pipe.resolve_settings(stop_at_stage=2, guidance_scale=[1, 2, 3])) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(guidance_scale="4"), "guidance_scale for stage 1 must be a number"),
    (dict(guidance_scale=[4.0, {"w": 1}, 1.0]), "guidance_scale for stage 2 must be a number"),
    (dict(guidance_scale=[[4.0], 1.0, 1.0]), "guidance_scale for stage 1 must be a number"),
    (dict(num_inference_steps=True), "num_inference_steps for stage 1 must be a number"),
    (dict(noise_aug_level=math.inf), "noise_aug_level for stage 1 must be a finite"),
    (dict(guidance_scale=101), "guidance_scale for stage 1 must be between"),
    (dict(dynamic_thresholding_max=0.5), "dynamic_thresholding_max"),
    (dict(scheduler=["dpm++", "warp-drive", "ddim"]), "scheduler for stage 2: unknown scheduler"),
    (dict(scheduler=3), "scheduler for stage 1 must be a scheduler name"),
    (dict(stop_at_stage=1.5), "stop_at_stage"),
])
def test_resolve_settings_names_the_bad_setting(tiny_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe.resolve_settings(**kwargs)


def test_default_settings_are_saved_and_loaded(tiny_pipe, tmp_path):
    from imagen_app.training.tiny import tiny_pipeline

    pipe = tiny_pipeline(resolutions=(8, 32))
    pipe.settings.update(guidance_scale=[7.0, 1.5], num_inference_steps=[5, 2])
    pipe.save_pretrained(tmp_path)
    loaded = ImagenPipeline.from_pretrained(tmp_path)
    assert loaded.resolve_settings() == pipe.resolve_settings()
    assert [s.guidance_scale for s in loaded.resolve_settings()] == [7.0, 1.5]


# ----- settings: one table, resolved once -----------------------------------------------------------------
def test_the_settings_table_is_what_the_pipeline_takes():
    from dataclasses import fields

    from imagen_app.pipeline.settings import SETTINGS, StageSettings

    names = [s.name for s in SETTINGS]
    assert [f.name for f in fields(StageSettings)] == ["stage", *names]
    for method in (ImagenPipeline.stream, ImagenPipeline.__call__, ImagenPipeline.resolve_settings):
        assert set(names) <= set(inspect.signature(method).parameters), method.__name__
    # __call__ forwards every argument to stream: the two take the same ones
    call, stream = (inspect.signature(m).parameters.keys() for m in (ImagenPipeline.__call__, ImagenPipeline.stream))
    assert call == stream


def test_cli_flags_come_from_the_settings_table():
    from imagen_app.cli import build_parser, setting_values
    from imagen_app.pipeline.settings import SETTINGS

    args = build_parser().parse_args(["generate", "red heart", "--steps", "4,2", "--guidance-scale", "5",
                                      "--dynamic-thresholding-percentile", "0", "--dynamic-thresholding-max", "1.5",
                                      "--noise-aug-level", "0.2,0.3", "--scheduler", "ddim,euler"])
    assert setting_values(args) == dict(num_inference_steps=[4.0, 2.0], guidance_scale=5.0,
                                        dynamic_thresholding_percentile=0.0, dynamic_thresholding_max=1.5,
                                        noise_aug_level=[0.2, 0.3], scheduler=["ddim", "euler"])
    assert set(setting_values(args)) == {s.name for s in SETTINGS}
    upscale = build_parser().parse_args(["upscale", "small.png", "--steps", "3"])
    assert setting_values(upscale, ["num_inference_steps", "noise_aug_level"]) == dict(num_inference_steps=3.0,
                                                                                        noise_aug_level=None)


def test_resolved_stage_settings_run_as_they_are(tiny_pipe):
    kwargs = dict(num_inference_steps=[2, 1, 1], guidance_scale=5.0, scheduler="ddim", stop_at_stage=2)
    stages = tiny_pipe.resolve_settings(**kwargs)
    given = tiny_pipe("red heart", stage_settings=stages, generator=seeded(4))
    resolved_here = tiny_pipe("red heart", generator=seeded(4), **kwargs)
    assert given.settings == resolved_here.settings and len(given.stage_images) == 2
    for a, b in zip(given.stage_images, resolved_here.stage_images):
        assert np.array_equal(pixels(a[0]), pixels(b[0]))
    with pytest.raises(ValueError, match="guidance_scale"):  # resolved settings, or settings to resolve: not both
        tiny_pipe("red heart", stage_settings=stages, guidance_scale=2.0)
    with pytest.raises(ValueError, match="stop_at_stage"):
        tiny_pipe("red heart", stage_settings=stages, stop_at_stage=1)
    with pytest.raises(ValueError, match="stage_settings"):
        tiny_pipe("red heart", stage_settings=stages[1:])  # stage 2 without stage 1
    with pytest.raises(ValueError, match="stage_settings"):
        tiny_pipe("red heart", stage_settings=[dict(guidance_scale=5.0)])


def test_native_stages_run_through_their_adapter(tiny_pipe):
    from imagen_app.pipeline.guidance import StageDenoiser
    from imagen_app.pipeline.stages import NativeStage

    stages = tiny_pipe.resolve_settings(scheduler="ddim")
    for k, s in enumerate(stages):
        stage = tiny_pipe.stage(k)
        assert isinstance(stage, NativeStage) and stage.unet is tiny_pipe.unets[k] and stage.sample_channels == 3
        sched = stage.scheduler(s)
        assert type(sched).__name__ == "DDIMScheduler" and sched is not tiny_pipe.schedulers[k]  # fresh per run
    embeds = tiny_pipe.prompt_encoder.encode(["red heart"])
    denoise = tiny_pipe.stage(0).denoiser(stages[0], tiny_pipe.stage(0).scheduler(stages[0]), None, embeds, embeds,
                                          torch.randn, "cpu")
    assert isinstance(denoise, StageDenoiser) and denoise.guidance_scale == stages[0].guidance_scale
    assert not tiny_pipe.is_deepfloyd_if


# ----- loading ------------------------------------------------------------------------------------------
def test_pipeline_saved_before_the_folder_split_loads(tmp_path):
    """model_index.json of a pipeline saved before the package had layer folders names "imagen_app.unet" for its
    U-Nets (now imagen_app.models.unet); it loads, and gives the same image."""
    from imagen_app.models.unet import ImagenUNet
    from imagen_app.training.tiny import tiny_pipeline

    pipe = tiny_pipeline(resolutions=(8, 32))
    pipe.save_pretrained(tmp_path)
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    unets = [name for name, spec in index.items() if isinstance(spec, list) and spec[1] == "ImagenUNet"]
    assert unets == ["unet_1", "unet_2"] and {index[name][0] for name in unets} == {"imagen_app.models.unet"}
    for name in unets:
        index[name][0] = "imagen_app.unet"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ImportError):
        __import__("imagen_app.unet")  # the old module path is gone
    loaded = ImagenPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.unet_1, ImagenUNet) and loaded.num_stages == 2
    a = pipe("red heart", generator=seeded(6))
    b = loaded("red heart", generator=seeded(6))
    for x, y in zip(a.stage_images, b.stage_images):
        assert np.array_equal(pixels(x[0]), pixels(y[0]))


# ----- generators: each image reproducible alone --------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddpm", "euler-ancestral"])
def test_generator_list_makes_each_image_reproducible_alone(tiny_pipe, name):
    """Image i of a batch made with generators [g0, g1, g2] is the image that g_i makes alone: the initial
    noise, the noise augmentation and the ancestral step noise all come from the image's own generator
    (the global RNG is set differently before every call, so noise taken from it would show)."""
    kwargs = dict(scheduler=name, num_inference_steps=[3, 2, 2], guidance_scale=[3.0, 2.0, 1.0])
    torch.manual_seed(100)
    batch = tiny_pipe(["red heart"] * 3, generator=[seeded(10 + i) for i in range(3)], **kwargs).stage_images
    for i in range(3):
        torch.manual_seed(200 + i)
        alone = tiny_pipe("red heart", generator=seeded(10 + i), **kwargs).stage_images
        for stage in range(3):  # batched and single U-Net calls may round differently in the last bit
            assert np.abs(pixels(batch[stage][i]) - pixels(alone[stage][0])).max() <= 2, (i, stage)


# ----- the shipped model (slow: skipped unless `-m slow`) ------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    pipe = ImagenPipeline.from_pretrained(WEIGHTS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow
def test_shipped_weights_run_every_stage(shipped):
    assert shipped.num_stages == 3 and shipped.stage_resolutions == [32, 128, 512]
    events = list(shipped.stream("red heart", num_inference_steps=1, generator=seeded()))
    assert [(e.stage, e.step) for e in events[:-1]] == [(1, 1), (2, 1), (3, 1)]
    out = events[-1].output
    assert [imgs[0].size for imgs in out.stage_images] == [(32, 32), (128, 128), (512, 512)]
    for imgs in out.stage_images:
        arr = pixels(imgs[0])
        assert arr.std() > 5  # a picture, not a flat colour
    assert torch.isfinite(events[-1].x0).all()


SHIPPED_PROMPTS = ["red heart", "grinning face", "flag: japan", "woman firefighter: dark skin tone"]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["dpm++", "ddim"])
def test_dynamic_thresholding_at_default_guidance_keeps_the_image(shipped, scheduler):
    """Imagen §2.3 at the paper's p = 99.5 and the default guidance scales keeps the picture: pixel distance
    to the unthresholded result, per prompt and on average (it was 27.8 on average and 67 at worst, a noisy
    collage, while s could reach 1.5 and grey the white background at every step)."""
    distances = []
    for i, prompt in enumerate(SHIPPED_PROMPTS):
        kwargs = dict(scheduler=scheduler, num_inference_steps=[8, 2], stop_at_stage=2)
        plain = shipped(prompt, dynamic_thresholding_percentile=0, generator=seeded(i), **kwargs).stage_images
        thresholded = shipped(prompt, dynamic_thresholding_percentile=99.5, generator=seeded(i), **kwargs).stage_images
        distances += [np.abs(pixels(a[0]) - pixels(b[0])).mean() for a, b in zip(plain, thresholded)]  # 0..255
    assert max(distances) < 40 and np.mean(distances) < 20, distances


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny_pipe):
    folder = tmp_path_factory.mktemp("saved_tiny") / "pipe"
    tiny_pipe.save_pretrained(str(folder))
    return folder


def load_with_defaults_file(saved_tiny, tmp_path, text):
    """The saved tiny pipeline with pipeline_defaults.json replaced by `text` (None: removed)."""
    import shutil

    copy = tmp_path / "pipe"
    shutil.copytree(saved_tiny, copy)
    path = copy / "pipeline_defaults.json"
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    with pytest.warns(UserWarning, match="pipeline_defaults.json") as caught:
        pipe = ImagenPipeline.from_pretrained(str(copy))
    assert [str(w.message) for w in caught if "pipeline_defaults.json" in str(w.message)] == pipe.load_warnings
    return pipe


def test_shipped_defaults_are_the_shipped_files():
    from imagen_app.pipeline.settings import SHIPPED_DEFAULTS

    with open(f"{WEIGHTS}/pipeline_defaults.json") as f:
        assert json.load(f) == SHIPPED_DEFAULTS
    assert SHIPPED_DEFAULTS != ImagenPipeline.default_settings  # the library's draw worse: not the fallback


def test_wrong_values_in_the_defaults_file_are_named_and_the_shipped_ones_used(saved_tiny, tmp_path, tiny_pipe):
    from imagen_app.pipeline.settings import SHIPPED_DEFAULTS

    saved = dict(tiny_pipe.settings, num_inference_steps="many", scheduler=5, dynamic_thresholding_percentile=[99, 20])
    pipe = load_with_defaults_file(saved_tiny, tmp_path, json.dumps(saved))
    wrong = {name for name in ("num_inference_steps", "scheduler", "dynamic_thresholding_percentile")
             if any(f"{name} = " in w and "wrong" in w for w in pipe.load_warnings)}
    assert wrong == {"num_inference_steps", "scheduler", "dynamic_thresholding_percentile"}, pipe.load_warnings
    assert len(pipe.load_warnings) == 3
    for name in wrong:
        assert pipe.settings[name] == SHIPPED_DEFAULTS[name]  # the shipped model's, not the library's [16, 8, 4]
    assert pipe.settings["guidance_scale"] == tiny_pipe.settings["guidance_scale"]  # the right values stay
    stages = pipe.resolve_settings()
    assert [s.num_inference_steps for s in stages] == [16, 8, 2]
    assert {s.dynamic_thresholding_percentile for s in stages} == {0}


@pytest.mark.parametrize("text, says", [("{not json", "is damaged"), ("[1, 2]", "not an object"),
                                        (None, "is missing")])
def test_a_damaged_or_missing_defaults_file_starts_with_the_shipped_defaults(saved_tiny, tmp_path, text, says):
    from imagen_app.pipeline.settings import SHIPPED_DEFAULTS

    pipe = load_with_defaults_file(saved_tiny, tmp_path, text)
    assert len(pipe.load_warnings) == 1 and says in pipe.load_warnings[0]
    assert "shipped model's default settings" in pipe.load_warnings[0]
    assert pipe.settings == SHIPPED_DEFAULTS
