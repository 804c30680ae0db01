import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from imagen_app.train import TrainConfig, export_stage, train
from imagen_app.unet import ImagenUNet

TINY_UNET = dict(block_out_channels=[8, 16], layers_per_block=[1, 1], cross_attention_levels=[False, True],
                 self_attention_levels=[False, True], attention_head_dim=8, norm_num_groups=4)


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory, tiny_pipe):
    d = tmp_path_factory.mktemp("t5")
    tiny_pipe.tokenizer.save_pretrained(d / "tokenizer")
    tiny_pipe.text_encoder.save_pretrained(d / "text_encoder")
    return str(d)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    colours = {"red heart": (220, 30, 30), "blue heart": (30, 30, 220), "green circle": (30, 200, 30), "panda": (0, 0, 0)}
    rows = []
    for i, (caption, colour) in enumerate(colours.items()):
        arr = np.full((40, 48, 3), 255, np.uint8)
        arr[8:32, 10:38] = colour
        arr = np.clip(arr + rng.integers(-5, 5, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.png")
        if i % 2:
            (d / f"img{i}.txt").write_text(caption + "\n")
        else:
            rows.append(json.dumps({"file_name": f"img{i}.png", "text": caption}))
    (d / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return str(d)


def config(tmp_path, text_encoder_dir, image_folder, **kw):
    base = dict(run_dir=str(tmp_path / "run"), text_encoder=text_encoder_dir, data=image_folder, resolution=16,
                unet=TINY_UNET, batch_size=4, lr=1e-3, warmup_steps=2, checkpoint_every=2, sample_every=0, max_steps=4,
                threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_image_folder_reads_sidecars_and_metadata(image_folder):
    from imagen_app.data import image_folder_dataset

    data = image_folder_dataset(image_folder, 16)
    assert data.images.shape == (4, 16, 16, 3)
    assert sorted(c[0] for c in data.captions) == ["blue heart", "green circle", "panda", "red heart"]


def test_resume_continues_exactly(tmp_path, text_encoder_dir, image_folder):
    logs = []
    straight = config(tmp_path / "a", text_encoder_dir, image_folder, max_steps=6)
    assert train(straight, log=logs.append) == 6
    split = config(tmp_path / "b", text_encoder_dir, image_folder, max_steps=4)
    assert train(split, log=logs.append) == 4
    split.max_steps = 6
    resumed_logs = []
    assert train(split, log=resumed_logs.append) == 6
    assert any("resumed" in m and "step 4" in m for m in resumed_logs)
    a = torch.load(os.path.join(straight.run_dir, "checkpoint.pt"), weights_only=False)
    b = torch.load(os.path.join(split.run_dir, "checkpoint.pt"), weights_only=False)
    for key in a["unet"]:
        torch.testing.assert_close(a["unet"][key], b["unet"][key], msg=key)
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], msg=key)


def test_killed_run_resumes_from_last_checkpoint(tmp_path, text_encoder_dir, image_folder):
    cfg = config(tmp_path, text_encoder_dir, image_folder, max_steps=100_000, checkpoint_every=3)
    cfg_path = tmp_path / "cfg.json"
    from dataclasses import asdict

    cfg_path.write_text(json.dumps(asdict(cfg)))
    ckpt = os.path.join(cfg.run_dir, "checkpoint.pt")
    proc = subprocess.Popen([sys.executable, "-m", "imagen_app", "train", str(cfg_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if os.path.exists(ckpt) and torch.load(ckpt, weights_only=False)["step"] >= 6:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint was written")
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait()
    saved_step = torch.load(ckpt, weights_only=False)["step"]
    assert saved_step >= 6 and saved_step % 3 == 0
    logs = []
    cfg.max_steps = saved_step + 2
    assert train(cfg, log=logs.append) == saved_step + 2
    assert any(f"resumed from {ckpt} at step {saved_step}" in m for m in logs)


def test_super_resolution_stage_on_crops_and_export(tmp_path, text_encoder_dir, image_folder):
    cfg = config(tmp_path, text_encoder_dir, image_folder, resolution=32, lowres_resolution=8, crop_size=16, max_steps=2)
    logs = []
    assert train(cfg, log=logs.append) == 2
    assert any("loss" in m for m in logs)
    out = tmp_path / "exported"
    export_stage(cfg.run_dir, str(out))
    unet = ImagenUNet.from_pretrained(str(out))
    assert unet.config.lowres_cond and unet.config.sample_size == 32
    ema = torch.load(os.path.join(cfg.run_dir, "checkpoint.pt"), weights_only=False)["ema"]
    torch.testing.assert_close(unet.state_dict()["conv_in.weight"], ema["conv_in.weight"])


def test_sr_batch_crops_are_aligned(text_encoder_dir, image_folder, tmp_path):
    import random

    from imagen_app.data import image_folder_dataset
    from imagen_app.train import make_batch

    cfg = config(tmp_path, text_encoder_dir, image_folder, resolution=32, lowres_resolution=8, crop_size=16)
    data = image_folder_dataset(image_folder, 32)
    images, captions, lowres = make_batch(data, cfg, random.Random(0), "cpu")
    assert images.shape == (4, 3, 16, 16) and lowres.shape == (4, 3, 4, 4) and len(captions) == 4
    # the low-res crop is the area-downsampled high-res crop
    torch.testing.assert_close(torch.nn.functional.interpolate(images, size=4, mode="area"), lowres, atol=1e-5, rtol=0)


def test_assemble_exported_stages_into_a_pipeline(tmp_path, text_encoder_dir, image_folder):
    from safetensors import safe_open

    from imagen_app import ImagenPipeline
    from imagen_app.train import assemble_pipeline

    base = config(tmp_path / "base", text_encoder_dir, image_folder, resolution=8, max_steps=1)
    sr = config(tmp_path / "sr", text_encoder_dir, image_folder, resolution=32, lowres_resolution=8, crop_size=16,
                max_steps=1)
    for cfg in (base, sr):
        train(cfg, log=lambda m: None)
        export_stage(cfg.run_dir, cfg.run_dir + "_export")
    out = tmp_path / "pipe"
    assemble_pipeline(text_encoder_dir, [base.run_dir + "_export", sr.run_dir + "_export"], str(out),
                      settings={"num_inference_steps": [2, 2], "guidance_scale": [3.0, 1.0]})
    with safe_open(str(out / "unet_1" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor("conv_in.weight").dtype == torch.float16  # shipped compact
    pipe = ImagenPipeline.from_pretrained(out)
    assert pipe.unet_1.dtype == torch.float32 and pipe.settings["guidance_scale"] == [3.0, 1.0]
    pipe.set_progress_bar_config(disable=True)
    images = pipe("red heart", generator=torch.Generator().manual_seed(0)).stage_images
    assert [im[0].size for im in images] == [(8, 8), (32, 32)]


def test_min_snr_weighting(tmp_path, text_encoder_dir, image_folder):
    from imagen_app.pipeline import noise_schedule
    from imagen_app.train import diffusion_loss

    unet = ImagenUNet(sample_size=16, text_embed_dim=16, **TINY_UNET)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)  # a non-trivial prediction
    sched = noise_schedule()
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    embeds, mask = torch.randn(6, 4, 16), torch.ones(6, 4, dtype=torch.bool)

    def loss(gamma, seed=0):
        torch.manual_seed(seed)
        cfg = config(tmp_path, text_encoder_dir, image_folder, min_snr_gamma=gamma, cond_drop_prob=0.0)
        return diffusion_loss(unet, sched, images, embeds, mask, None, cfg).item()

    plain = loss(None)
    assert loss(1e9) == pytest.approx(plain, rel=1e-5)  # gamma above every SNR: weight 1 for epsilon
    weighted = loss(1.0)
    assert weighted < plain  # weights min(SNR, 1) / SNR <= 1, < 1 where the image is nearly clean
    torch.manual_seed(0)  # the same timesteps and noise as loss(): weight by hand
    noise = torch.randn_like(images)
    t = torch.randint(0, 1000, (6,))
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    pred = unet(sched.add_noise(images, noise, t), t, embeds, mask).sample
    per_sample = (pred - noise).pow(2).flatten(1).mean(1)
    assert weighted == pytest.approx(float((per_sample * snr.clamp(max=1.0) / snr).mean()), rel=1e-4)


def test_init_from_can_switch_prediction_type_and_residual(tmp_path, text_encoder_dir, image_folder):
    sr = dict(lowres_resolution=8, resolution=16, crop_size=8)
    first = config(tmp_path, text_encoder_dir, image_folder, max_steps=2, **sr)
    train(first, log=lambda *_: None)
    export_stage(first.run_dir, str(tmp_path / "exported"))
    unet = dict(TINY_UNET, prediction_type="v_prediction", residual=True)
    second = config(tmp_path, text_encoder_dir, image_folder, run_dir=str(tmp_path / "run2"), unet=unet, max_steps=2,
                    init_from=str(tmp_path / "exported"), **sr)
    train(second, log=lambda *_: None)
    export_stage(second.run_dir, str(tmp_path / "exported2"))
    loaded = ImagenUNet.from_pretrained(str(tmp_path / "exported2"))
    assert loaded.config.prediction_type == "v_prediction" and loaded.config.residual
    before = ImagenUNet.from_pretrained(str(tmp_path / "exported"))
    assert before.config.prediction_type == "epsilon" and not before.config.residual
