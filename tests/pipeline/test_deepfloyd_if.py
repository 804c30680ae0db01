"""DeepFloyd IF stages in the playground's cascade, checked against diffusers' own IF pipelines.

Tiny random IF-layout pipelines are built here with diffusers' classes (UNet2DConditionModel with IF's
config keys, a tiny T5EncoderModel, a locally trained tokenizer, DDPM with learned_range variance and
thresholding), saved with `save_pretrained`, and loaded back by the loader under test.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline, UNet2DConditionModel
from transformers import T5EncoderModel

from imagen_app.pipeline import deepfloyd_if
from imagen_app.images import to_pil
from imagen_app.models.text_encoder import freeze
from imagen_app.training.text_pretrain import small_t5_config, train_caption_tokenizer

from conftest import REPO, seeded

PROMPT = "a red panda wearing a blue hat"
CAPTIONS = [PROMPT, "a photo of a corgi", "green circle", "grinning face on the moon", "flag of japan"]
D = 16  # T5 width = the U-Nets' encoder_hid_dim


def tiny_if_unet(size: int, superres: bool) -> UNet2DConditionModel:
    """An IF-layout U-Net at a tiny size (IF-I/II's block types and config keys)."""
    extra = dict(class_embed_type="timestep", mid_block_scale_factor=1.414, time_embedding_act_fn="gelu",
                 time_embedding_dim=32) if superres else {}
    unet = UNet2DConditionModel(
        sample_size=size, in_channels=6 if superres else 3, out_channels=6, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32, encoder_hid_dim=D, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu", norm_num_groups=8, **extra)
    for module in unet.modules():  # zero-initialised output layers would make every output 0
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.weight.abs().sum() == 0:
            torch.nn.init.normal_(module.weight, std=0.05)
    return unet.eval()


def if_scheduler(max_value: float) -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
                         dynamic_thresholding_ratio=0.95, sample_max_value=max_value, clip_sample=True)


@pytest.fixture(scope="module")
def if_folders(tmp_path_factory):
    """(stage I folder, stage II folder) as diffusers' IFPipeline / IFSuperResolutionPipeline save them."""
    root = tmp_path_factory.mktemp("deepfloyd_if")
    torch.manual_seed(0)
    tokenizer = train_caption_tokenizer(CAPTIONS, max_length=deepfloyd_if.MAX_LENGTH)
    text_encoder = freeze(T5EncoderModel(small_t5_config(len(tokenizer), d_model=D, layers=1, heads=2)))
    common = dict(tokenizer=tokenizer, text_encoder=text_encoder, safety_checker=None, feature_extractor=None,
                  watermarker=None, requires_safety_checker=False)
    stage_1 = IFPipeline(unet=tiny_if_unet(16, False), scheduler=if_scheduler(1.5), **common)
    stage_2 = IFSuperResolutionPipeline(unet=tiny_if_unet(32, True), scheduler=if_scheduler(1.0),
                                        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), **common)
    stage_1.save_pretrained(root / "IF-I", safe_serialization=True)
    stage_2.save_pretrained(root / "IF-II", safe_serialization=True)
    return str(root / "IF-I"), str(root / "IF-II")


@pytest.fixture(scope="module")
def reference(if_folders):
    """diffusers' IF pipelines loaded from the same folders."""
    one = IFPipeline.from_pretrained(if_folders[0])
    two = IFSuperResolutionPipeline.from_pretrained(if_folders[1], text_encoder=one.text_encoder, tokenizer=one.tokenizer)
    for p in (one, two):
        p.set_progress_bar_config(disable=True)
    return one, two


def agreement(a, b):
    """(max abs difference in 1/255 units, share of pixels within 2/255) of two lists of PIL images."""
    x = np.stack([np.asarray(i, dtype=np.int16) for i in a])
    y = np.stack([np.asarray(i, dtype=np.int16) for i in b])
    assert x.shape == y.shape
    diff = np.abs(x - y).max(axis=-1)  # per pixel, over channels
    return int(diff.max()), float((diff <= 2).mean())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These U-Nets are tiny: one thread is fastest, and far faster than two on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def if_pipe(if_folders):
    from imagen_app import ImagenPipeline

    pipe = ImagenPipeline.from_deepfloyd_if(*if_folders)
    pipe.set_progress_bar_config(disable=True)
    pipe.cpu_bf16 = False  # compared with diffusers' pipelines, which run float32 as loaded
    return pipe


def test_loads_if_folders_with_ifs_defaults(if_pipe):
    assert if_pipe.num_stages == 2 and if_pipe.stage_resolutions == [16, 32]
    encoders = [m for m in if_pipe.components.values() if isinstance(m, T5EncoderModel)]
    assert encoders == [if_pipe.text_encoder]  # one T5, from stage I (stage II's copy is not loaded)
    stages = if_pipe.resolve_settings()
    assert [s.num_inference_steps for s in stages] == [100, 50]
    assert [s.guidance_scale for s in stages] == [7.0, 4.0]
    assert [s.dynamic_thresholding_percentile for s in stages] == [95.0, 95.0]  # the schedulers' own settings
    assert [s.dynamic_thresholding_max for s in stages] == [1.5, 1.0]
    assert stages[1].noise_aug_level == 0.25  # IF's noise_level 250 / 1000
    sched = deepfloyd_if.make_scheduler(if_pipe.scheduler_1, None, 95.0, 1.5)
    assert sched.config.thresholding and sched.config.dynamic_thresholding_ratio == 0.95
    assert sched.config.sample_max_value == 1.5 and sched.config.variance_type == "learned_range"


def test_if_stages_run_through_their_adapter(if_pipe):
    """The cascade's loop asks each stage's adapter: IF's denoises 3 channels (stage II's U-Net also takes the
    upscaled image) with IF's scheduler, which thresholds itself."""
    stages = if_pipe.resolve_settings()
    adapters = [if_pipe.stage(k) for k in range(2)]
    assert all(isinstance(a, deepfloyd_if.DeepFloydIFStage) for a in adapters) and if_pipe.is_deepfloyd_if
    assert [a.unet.config.in_channels for a in adapters] == [3, 6] and [a.sample_channels for a in adapters] == [3, 3]
    sched = adapters[1].scheduler(stages[1])
    assert sched.config.thresholding and sched.config.sample_max_value == 1.0


def test_stage_1_equals_diffusers_ifpipeline(if_pipe, reference):
    ours = if_pipe(PROMPT, num_inference_steps=20, guidance_scale=7.0, stop_at_stage=1, generator=seeded(3))
    theirs = reference[0](PROMPT, num_inference_steps=20, guidance_scale=7.0, generator=seeded(3)).images
    worst, within = agreement(ours.images, theirs)
    assert within >= 0.99, (worst, within)
    assert worst <= 2, (worst, within)  # measured: identical images (max difference 0)


def test_cascade_equals_diffusers_if_then_superresolution(if_pipe, reference):
    """Stage II given stage I's image: one generator runs through both stages, in IF's order of draws."""
    ours = if_pipe(PROMPT, negative_prompt="blurry", num_inference_steps=[12, 8], guidance_scale=[7.0, 4.0],
                   generator=seeded(5))
    g = seeded(5)
    low = reference[0](PROMPT, negative_prompt="blurry", num_inference_steps=12, guidance_scale=7.0, generator=g,
                       output_type="pt").images
    high = reference[1](PROMPT, negative_prompt="blurry", image=low, num_inference_steps=8, guidance_scale=4.0,
                        noise_level=250, generator=g).images
    for mine, ref in ((ours.stage_images[0], to_pil(low)), (ours.stage_images[1], high)):
        worst, within = agreement(mine, ref)
        assert within >= 0.99 and worst <= 2, (worst, within)


def test_start_at_stage_2_equals_diffusers_superresolution(if_pipe, reference):
    low = if_pipe(PROMPT, num_inference_steps=6, stop_at_stage=1, generator=seeded(1)).images
    ours = if_pipe(PROMPT, image=low, start_at_stage=2, num_inference_steps=[None, 10], noise_aug_level=0.1,
                   generator=seeded(2))
    theirs = reference[1](PROMPT, image=low, num_inference_steps=10, guidance_scale=4.0, noise_level=100,
                          generator=seeded(2)).images
    worst, within = agreement(ours.images, theirs)
    assert within >= 0.99 and worst <= 2, (worst, within)
    assert len(ours.stage_images) == 1 and ours.images[0].size == (32, 32)


def test_streams_every_step_of_both_stages(if_pipe):
    events = list(if_pipe.stream(PROMPT, num_inference_steps=[3, 2], generator=seeded(0)))
    steps = [(e.stage, e.step, e.total_steps) for e in events if not e.is_final]
    assert steps == [(1, 1, 3), (1, 2, 3), (1, 3, 3), (2, 1, 2), (2, 2, 2)]
    assert [e.preview.size for e in events[:-1]] == [(16, 16)] * 3 + [(32, 32)] * 2
    final = events[-1]
    assert final.is_final and [im[0].size for im in final.output.stage_images] == [(16, 16), (32, 32)]
    assert final.output.prompt_reports[0].prompt == PROMPT


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "euler", "euler-ancestral", "unipc"])
def test_other_schedulers_run(if_pipe, scheduler):
    out = if_pipe(PROMPT, num_inference_steps=4, scheduler=scheduler, generator=seeded(0))
    arrays = [np.asarray(im[0], dtype=np.float32) for im in out.stage_images]
    assert [a.shape for a in arrays] == [(16, 16, 3), (32, 32, 3)]
    assert all(np.isfinite(a).all() and a.std() > 1 for a in arrays)


def test_thresholding_off_and_guidance_one(if_pipe):
    out = if_pipe(PROMPT, num_inference_steps=3, guidance_scale=1.0, dynamic_thresholding_percentile=0,
                  generator=seeded(0))
    assert out.images[0].size == (32, 32)
    assert not deepfloyd_if.make_scheduler(if_pipe.scheduler_1, None, 0, 1.5).config.thresholding


def test_prompts_as_if_sees_them(if_pipe):
    enc = if_pipe.prompt_encoder
    assert isinstance(enc, deepfloyd_if.IFPromptEncoder)
    embeds, mask = enc.encode(["", "  A Red PANDA "])
    assert embeds.shape == (2, 77, D) and mask.shape == (2, 77)
    assert mask[0].sum() == 1  # the empty prompt is its end-of-sequence token alone, encoded like any prompt
    same, _ = enc.encode(["a red panda"])
    assert torch.equal(same[0], embeds[1])  # lower-cased and stripped, as IF's pipelines do without bs4/ftfy
    report = if_pipe.check_prompt("a red panda " + "moon " * 100)
    assert len(report.tokens) == 77 and report.truncated_words[:2] == ["moon", "moon"]
    assert if_pipe.check_prompt("a red zebra").unknown_words == ["zebra"]


def test_offline_hub_id_says_what_to_download(monkeypatch):
    from imagen_app import ImagenPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(deepfloyd_if.DeepFloydIFNotFound) as e:
        ImagenPipeline.from_deepfloyd_if("DeepFloyd/IF-I-XL-v1.0-not-cached")
    message = str(e.value)
    assert "licence" in message and "hf download" in message and "HF_TOKEN" in message


def test_stage_3_is_not_supported(if_folders):
    from imagen_app import ImagenPipeline

    with pytest.raises(NotImplementedError, match="stage III"):
        ImagenPipeline.from_deepfloyd_if(*if_folders, stage_3="stabilityai/stable-diffusion-x4-upscaler")


def test_wrong_folder_is_named(if_folders):
    with pytest.raises(ValueError, match="not an IF stage II"):
        deepfloyd_if.load_stage(if_folders[0], 2)


def test_weights_spec_loads_if(if_folders, tmp_path):
    from imagen_app import ImagenPipeline

    spec = tmp_path / "if.json"
    spec.write_text(json.dumps({"stage_1": if_folders[0], "stage_2": if_folders[1]}))
    assert ImagenPipeline.from_pretrained(str(spec)).num_stages == 2
    assert ImagenPipeline.from_pretrained(if_folders[0]).num_stages == 1  # a stage I folder alone


def test_cli_generates_with_deepfloyd_if(if_folders, tmp_path):
    from imagen_app.cli import main

    out = tmp_path / "if.png"
    assert main(["generate", PROMPT, "--deepfloyd-if", if_folders[0], "--stage-2", if_folders[1], "--steps", "3,2",
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (32, 32) and Image.open(tmp_path / "if_stage1.png").size == (16, 16)
    assert json.loads((tmp_path / "if.json").read_text())["num_inference_steps"] == [3, 2]


def test_app_starts_on_if(if_folders):
    from imagen_app.app.ui import build_app

    demo = build_app({"stage_1": if_folders[0], "stage_2": if_folders[1]})
    labels = [getattr(b, "label", None) or "" for b in demo.blocks.values()]
    assert any("stage 2 (32 px)" in label for label in labels), labels
    assert not any("stage 3" in label for label in labels)


def test_app_generate_streams_if(if_pipe):
    from imagen_app.app.ui import PipelineHolder, generate_outputs, make_generate

    generate = make_generate(PipelineHolder(if_pipe))
    updates = [generate_outputs(u, 2) for u in generate(PROMPT, seed=4, steps_stage_1=2, steps_stage_2=2,
                                                         progress=lambda *a, **k: None)]
    statuses = [u["status"] for u in updates]
    assert statuses[0].startswith("Stage 1/2") and any(s.startswith("Stage 2/2") for s in statuses)
    final = updates[-1]
    assert statuses[-1].startswith("Done") and final["stage_1"].size == (16, 16) and final["stage_2"].size == (32, 32)
    assert final["settings"]["scheduler"] == ["ddpm", "ddpm"] and final["settings"]["num_inference_steps"] == [2, 2]


def test_half_precision_loads_and_runs(if_folders):
    """bfloat16 on the CPU stands in for fp16 on CUDA: weights, embeddings and noise follow the dtype."""
    from imagen_app import ImagenPipeline

    pipe = ImagenPipeline.from_deepfloyd_if(*if_folders, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet_1.dtype == pipe.unet_2.dtype == pipe.text_encoder.dtype == torch.bfloat16
    deepfloyd_if.place(pipe, "cpu", text_encoder_on_cpu=True)
    out = pipe(PROMPT, num_inference_steps=2, generator=seeded(0))
    assert out.images[0].size == (32, 32) and np.asarray(out.images[0]).std() > 1


def test_app_flags_name_both_stages(if_folders, monkeypatch):
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("app_under_test", os.path.join(REPO, "app.py"))
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    seen = {}

    class Launched:
        def launch(self, **kwargs):
            seen["launched"] = True

    def build_app(source, **kwargs):
        seen["source"] = source
        return Launched()

    monkeypatch.setattr(app, "build_app", build_app)
    app.main(["--weights", if_folders[0], "--stage-2", if_folders[1]])
    assert seen == {"source": {"stage_1": if_folders[0], "stage_2": if_folders[1]}, "launched": True}


def test_fp16_variant_files_are_used(if_folders, tmp_path):
    """IF's hub repos ship fp16 files beside the fp32 ones (`*.fp16.safetensors`); fp16 loading picks them."""
    one = IFPipeline.from_pretrained(if_folders[0]).to(torch.float16)
    one.save_pretrained(tmp_path / "IF-I-fp16", variant="fp16", safe_serialization=True)
    assert any(".fp16." in f.name for f in (tmp_path / "IF-I-fp16" / "unet").iterdir())
    stage = deepfloyd_if.load_stage(str(tmp_path / "IF-I-fp16"), 1, torch.float16, with_text_encoder=True)
    assert stage.unet.dtype == torch.float16 and stage.text_encoder is not None


def test_saved_and_reloaded_if_cascade_gives_the_same_images(if_pipe, tmp_path):
    from imagen_app import ImagenPipeline

    if_pipe.save_pretrained(tmp_path / "if-cascade")
    again = ImagenPipeline.from_pretrained(str(tmp_path / "if-cascade"))
    again.set_progress_bar_config(disable=True)
    again.cpu_bf16 = if_pipe.cpu_bf16  # a machine's choice, not saved with the weights
    assert again.is_deepfloyd_if and again.resolve_settings() == if_pipe.resolve_settings()
    a = if_pipe(PROMPT, num_inference_steps=[3, 2], generator=seeded(9))
    b = again(PROMPT, num_inference_steps=[3, 2], generator=seeded(9))
    for x, y in zip(a.stage_images, b.stage_images):
        assert agreement(x, y) == (0, 1.0)
