import dataclasses
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from imagen_app.models.unet import ImagenUNet
from imagen_app.training.checkpoints import CHECKPOINT, checkpoint_path, read_checkpoint, read_checkpoint_step
from imagen_app.training.config import TrainConfig
from imagen_app.training.export import export_stage
from imagen_app.training.train import train

from conftest import REPO as ROOT  # noqa: E402

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
    from imagen_app.training.data import image_folder_dataset

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
    assert_same_training_state(straight.run_dir, split.run_dir)


def assert_same_training_state(run_a, run_b):
    a, b = (read_checkpoint(os.path.join(run, CHECKPOINT)) for run in (run_a, run_b))
    assert a["step"] == b["step"] and a["ema_updates"] == b["ema_updates"] and a["lr_scheduler"] == b["lr_scheduler"]
    for part in ("unet", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    for i, state in a["opt"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(value, b["opt"]["state"][i][key], rtol=0, atol=0)


def test_killed_run_resumes_from_last_checkpoint(tmp_path, text_encoder_dir, image_folder):
    cfg = config(tmp_path, text_encoder_dir, image_folder, max_steps=100_000, checkpoint_every=3)
    cfg_path = tmp_path / "cfg.json"
    from dataclasses import asdict

    cfg_path.write_text(json.dumps(asdict(cfg)))
    ckpt = os.path.join(cfg.run_dir, CHECKPOINT)
    proc = subprocess.Popen([sys.executable, "-m", "imagen_app", "train", str(cfg_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if os.path.exists(ckpt) and read_checkpoint_step(ckpt) >= 6:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint was written")
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait()
    saved_step = read_checkpoint_step(ckpt)
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
    ema = read_checkpoint(checkpoint_path(cfg.run_dir))["ema"]
    torch.testing.assert_close(unet.state_dict()["conv_in.weight"], ema["conv_in.weight"])
    export_stage(cfg.run_dir, str(tmp_path / "exported16"), fp16=True)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "exported16" / "diffusion_pytorch_model.safetensors"))
    assert all(t.dtype == torch.float16 for t in stored.values())  # stored in float16: half the size
    torch.testing.assert_close(stored["conv_in.weight"], ema["conv_in.weight"].half())


def test_sr_batch_crops_are_aligned(text_encoder_dir, image_folder, tmp_path):
    import random

    from imagen_app.training.data import image_folder_dataset
    from imagen_app.training.train import make_batch

    cfg = config(tmp_path, text_encoder_dir, image_folder, resolution=32, lowres_resolution=8, crop_size=16)
    data = image_folder_dataset(image_folder, 32)
    images, captions, lowres = make_batch(data, cfg, random.Random(0), "cpu")
    assert images.shape == (4, 3, 16, 16) and lowres.shape == (4, 3, 4, 4) and len(captions) == 4
    # the low-res crop is the area-downsampled high-res crop
    torch.testing.assert_close(torch.nn.functional.interpolate(images, size=4, mode="area"), lowres, atol=1e-5, rtol=0)


def test_typed_form_share_frames_a_batchs_captions_and_zero_draws_as_before(text_encoder_dir, image_folder, tmp_path):
    import random

    from imagen_app.training.data import image_folder_dataset
    from imagen_app.training.train import make_batch

    data = image_folder_dataset(image_folder, 8)
    plain = config(tmp_path, text_encoder_dir, image_folder, resolution=8, batch_size=64)
    framed = config(tmp_path, text_encoder_dir, image_folder, resolution=8, batch_size=64, typed_form_share=1.0)
    _, captions, _ = make_batch(data, plain, random.Random(0), "cpu")
    _, again, _ = make_batch(data, dataclasses.replace(plain, typed_form_share=0.0), random.Random(0), "cpu")
    _, typed, _ = make_batch(data, framed, random.Random(0), "cpu")
    assert again == captions and all(c in set(sum(data.captions, [])) for c in captions)
    assert all(t != c and c in t for t, c in zip(typed, captions) if ":" not in c)


def test_assemble_exported_stages_into_a_pipeline(tmp_path, text_encoder_dir, image_folder):
    from safetensors import safe_open

    from imagen_app import ImagenPipeline
    from imagen_app.training.export import assemble_pipeline

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
    from imagen_app.models.schedules import noise_schedule
    from imagen_app.training.train import diffusion_loss

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


def test_ink_weight_marks_ink_and_its_edge_not_paper():
    from imagen_app.training.train import ink_weight

    images = torch.ones(2, 3, 8, 8)  # white paper
    images[0, :, 3, 3] = -1.0  # one black pixel
    images[1, 0, 6, 6] = 0.5  # a pale tint in one channel: partly ink
    w = ink_weight(images, 4.0)
    assert w.shape == (2, 1, 8, 8)
    assert w[0, 0, 2:5, 2:5].eq(5.0).all()  # the ink and the pixel around it
    assert w[0].sum() == 64 + 9 * 4.0  # everything else is paper, weight 1
    assert 1.0 < w[1, 0, 6, 6] < 5.0
    assert ink_weight(torch.ones(1, 3, 4, 4), 4.0).eq(1.0).all()


def test_ink_loss_weight_weighs_the_objects_error(tmp_path, text_encoder_dir, image_folder):
    """With `ink_loss_weight`, the error on ink pixels counts 1 + w times; on blank paper the loss is unchanged."""
    from imagen_app.models.schedules import noise_schedule
    from imagen_app.training.train import diffusion_loss

    unet = ImagenUNet(sample_size=16, text_embed_dim=16, **TINY_UNET)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
    sched = noise_schedule()
    embeds, mask = torch.randn(4, 4, 16), torch.ones(4, 4, dtype=torch.bool)

    def loss(images, weight):
        torch.manual_seed(0)
        cfg = config(tmp_path, text_encoder_dir, image_folder, ink_loss_weight=weight, cond_drop_prob=0.0)
        return diffusion_loss(unet, sched, images, embeds, mask, None, cfg).item()

    paper = torch.ones(4, 3, 16, 16)
    assert loss(paper, 4.0) == pytest.approx(loss(paper, 0.0), rel=1e-6)
    ink = torch.full((4, 3, 16, 16), -1.0)  # all ink: every pixel weighted 5
    assert loss(ink, 4.0) == pytest.approx(5 * loss(ink, 0.0), rel=1e-5)


def test_a_super_resolution_stage_trains_with_a_curriculum(tmp_path, text_encoder_dir, image_folder):
    """The curriculum's text-use measure is a base-stage measure: a super-resolution run with a curriculum (the
    scene recipe's shares) trains instead of failing for want of a low-res image."""
    import shutil

    folder = tmp_path / "with_families"
    shutil.copytree(image_folder, folder)
    captions = ["red heart", "blue heart", "green circle", "panda"]
    (folder / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"img{i}.png", "text": c, "family": "hearts" if "heart" in c else "other"}) + "\n"
        for i, c in enumerate(captions)))
    logged = []
    cfg = config(tmp_path, text_encoder_dir, str(folder), max_steps=2, lowres_resolution=8, resolution=16,
                 crop_size=8, curriculum={"families": [], "keep": {"hearts": 0.5, "other": 0.5},
                                          "measure_per_family": 2, "measure_every": 1})
    assert train(cfg, log=logged.append) == 2
    assert not any(line.startswith("curriculum ignored") for line in logged)  # the curriculum was in use


def test_init_from_can_switch_prediction_type_and_residual_and_add_positions(tmp_path, text_encoder_dir, image_folder):
    sr = dict(lowres_resolution=8, resolution=16, crop_size=8)
    first = config(tmp_path, text_encoder_dir, image_folder, max_steps=2, **sr)
    train(first, log=lambda *_: None)
    export_stage(first.run_dir, str(tmp_path / "exported"))
    unet = dict(TINY_UNET, prediction_type="v_prediction", residual=True, text_position_embeddings=6)
    second = config(tmp_path, text_encoder_dir, image_folder, run_dir=str(tmp_path / "run2"), unet=unet, max_steps=2,
                    init_from=str(tmp_path / "exported"), **sr)
    train(second, log=lambda *_: None)
    export_stage(second.run_dir, str(tmp_path / "exported2"))
    loaded = ImagenUNet.from_pretrained(str(tmp_path / "exported2"))
    assert loaded.config.prediction_type == "v_prediction" and loaded.config.residual
    assert loaded.text_positions.shape == (6, loaded.config.text_embed_dim)
    before = ImagenUNet.from_pretrained(str(tmp_path / "exported"))
    assert before.config.prediction_type == "epsilon" and not before.config.residual and before.text_positions is None


def test_checkpoint_is_safetensors_with_a_json_header(tmp_path, text_encoder_dir, image_folder):
    from safetensors import safe_open

    cfg = config(tmp_path, text_encoder_dir, image_folder, max_steps=1)
    train(cfg, log=lambda *_: None)
    assert sorted(os.listdir(cfg.run_dir)) == [".lock", "checkpoint.safetensors", "config.json"]  # no temporary file left
    with safe_open(os.path.join(cfg.run_dir, CHECKPOINT), "pt") as f:
        meta = json.loads(f.metadata()["imagen_app"])
    assert meta["step"] == 1 and meta["ema_updates"] == 1 and len(meta["rng"]) == 1
    ckpt = read_checkpoint(os.path.join(cfg.run_dir, CHECKPOINT))
    for key, value in ckpt["unet"].items():  # diffusers' EMAModel: its first update copies the weights
        torch.testing.assert_close(ckpt["ema"][key], value, rtol=0, atol=0)


def test_legacy_checkpoint_resumes(tmp_path, text_encoder_dir, image_folder):
    """A run dir with only the old pickled checkpoint.pt resumes from it, as exactly as from the new format."""
    straight = config(tmp_path / "a", text_encoder_dir, image_folder, max_steps=6)
    train(straight, log=lambda *_: None)
    split = config(tmp_path / "b", text_encoder_dir, image_folder, max_steps=4)
    train(split, log=lambda *_: None)
    new = read_checkpoint(os.path.join(split.run_dir, CHECKPOINT))
    rng = new["rng"][0]
    torch.save(dict(unet=new["unet"], ema=new["ema"], ema_updates=new["ema_updates"], opt=new["opt"], step=new["step"],
                    python_rng=(rng["python"][0], tuple(rng["python"][1]), rng["python"][2]), torch_rng=rng["torch"]),
               os.path.join(split.run_dir, "checkpoint.pt"))  # the keys the old train.py wrote
    os.remove(os.path.join(split.run_dir, CHECKPOINT))
    split.max_steps = 6
    logs = []
    assert train(split, log=logs.append) == 6
    assert any("resumed from" in m and "checkpoint.pt at step 4" in m for m in logs)
    assert_same_training_state(straight.run_dir, split.run_dir)
    assert checkpoint_path(split.run_dir).endswith(CHECKPOINT)  # the newer file wins from now on


# --- several processes (torchrun and accelerate launch, gloo on this CPU) ---------------------------------------

def launch(launcher: str, cfg_path, *args, timeout=120):
    """Runs `python -m imagen_app train` in 2 CPU processes; returns the combined output."""
    from conftest import free_port

    port = str(free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", port]
    else:  # accelerate's multi-process launcher; on a machine without GPUs train() asks accelerate for gloo
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    cmd += ["-m", "imagen_app", "train", str(cfg_path), *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ranks_record(run_dir):
    with open(os.path.join(run_dir, "ranks.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, text_encoder_dir, image_folder):
    """A: 4 steps straight under accelerate launch. B: under torchrun, stopped by --max-minutes 0 after step 1, then
    resumed to step 4."""
    from dataclasses import asdict

    tmp = tmp_path_factory.mktemp("two_processes")
    runs = {}
    for name in ("a", "b"):
        # a cross-attention-only level, whose unused self-attention projection DDP must be told about
        unet = dict(TINY_UNET, self_attention_levels=[False, False])
        cfg = config(tmp / name, text_encoder_dir, image_folder, max_steps=4, record_ranks=True, unet=unet)
        (tmp / f"{name}.json").write_text(json.dumps(asdict(cfg)))
        runs[name] = cfg.run_dir
    out = dict(a=launch("accelerate", tmp / "a.json"))
    out["b_stopped"] = launch("torchrun", tmp / "b.json", "--max-minutes", "0")
    out["b_stopped_record"] = ranks_record(runs["b"])
    out["b_resumed"] = launch("torchrun", tmp / "b.json")
    return runs, out


def test_two_processes_draw_different_batches_and_keep_identical_weights(two_process_runs):
    runs, out = two_process_runs
    for run in runs.values():
        record = ranks_record(run)
        assert [r["step"] for r in record] == [1, 2, 3, 4]
        for row in record:
            rank0, rank1 = row["ranks"]
            assert (rank0["rank"], rank1["rank"]) == (0, 1)
            assert rank0["indices"] != rank1["indices"]  # offset seeds: the processes share the work
            assert rank0["weights"] == rank1["weights"]  # all-reduced gradients: one model, bit for bit
    assert "2 processes (MULTI_CPU)" in out["a"] and "global batch 8" in out["a"]


def test_two_processes_one_writer_and_one_stop_step(two_process_runs):
    runs, out = two_process_runs
    for run in runs.values():
        # no .tmp left
        assert sorted(os.listdir(run)) == [".lock", "checkpoint.safetensors", "config.json", "ranks.jsonl"]
        assert len(read_checkpoint(os.path.join(run, CHECKPOINT))["rng"]) == 2  # both ranks' RNG states
    for text in (out["a"], out["b_stopped"], out["b_resumed"]):
        assert text.count("stopped at step") == 1 and text.count("training images") == 1  # the main process logs
    # --max-minutes 0: the main process decides after the first step, and both ranks stop there
    assert [r["step"] for r in out["b_stopped_record"]] == [1] and "stopped at step 1" in out["b_stopped"]
    assert "at step 1" in out["b_resumed"] and "stopped at step 4" in out["b_resumed"]


def test_two_process_resume_matches_an_uninterrupted_run(two_process_runs):
    runs, _ = two_process_runs
    assert_same_training_state(runs["a"], runs["b"])  # also: accelerate launch and torchrun train alike


def test_sample_grid_is_one_row_of_the_sample_prompts(tmp_path):
    from PIL import Image

    from imagen_app.models.text_encoder import PromptEncoder
    from imagen_app.training.tiny import tiny_pipeline
    from imagen_app.training.export import write_sample_grid

    pipe = tiny_pipeline()
    cfg = TrainConfig(run_dir=str(tmp_path), text_encoder="", resolution=8, sample_prompts=["red heart", "panda", "flag: japan"])
    write_sample_grid(pipe.unet_1, pipe.scheduler_1, PromptEncoder(pipe.tokenizer, pipe.text_encoder), cfg,
                      str(tmp_path / "grid.png"), steps=2)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 8 * 2, 8 * 2)  # three cells side by side, shown at 2x
    assert len(set(grid.getdata())) > 1


def test_caption_variants_can_be_turned_off():
    from imagen_app.training.train import load_images

    bare = load_images(TrainConfig(run_dir="", text_encoder="", resolution=32, caption_variants=False))
    full = load_images(TrainConfig(run_dir="", text_encoder="", resolution=32))
    assert all(len(c) == 1 for c in bare.captions) and max(len(c) for c in full.captions) > 1
    assert [c[0] for c in bare.captions] == [c[0] for c in full.captions]  # the CLDR name comes first in both
    assert bare.families == full.families


def test_text_positions_get_their_own_lr_without_weight_decay(tmp_path, text_encoder_dir, image_folder):
    from imagen_app.training.train import parameter_groups

    unet = ImagenUNet(**dict(TINY_UNET, text_embed_dim=16, text_position_embeddings=4))
    plain = config(tmp_path, text_encoder_dir, image_folder, weight_decay=0.01)
    assert len(parameter_groups(unet, plain)) == 1
    cfg = config(tmp_path, text_encoder_dir, image_folder, weight_decay=0.01, text_positions_lr=0.05)
    rest, positions = parameter_groups(unet, cfg)
    assert positions["params"] == [unet.text_positions] and positions["lr"] == 0.05 and positions["weight_decay"] == 0
    assert len(rest["params"]) == len(list(unet.parameters())) - 1
    opt = torch.optim.AdamW(parameter_groups(unet, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    assert [g["lr"] for g in opt.param_groups] == [cfg.lr, 0.05] and opt.param_groups[0]["weight_decay"] == 0.01


def test_pixel_coordinates_join_the_word_order_group(tmp_path, text_encoder_dir, image_folder):
    from imagen_app.training.train import parameter_groups

    unet = ImagenUNet(**dict(TINY_UNET, text_embed_dim=16, text_position_embeddings=4, pixel_coordinates=True))
    coordinates = [m.coordinates.weight for m in unet.modules() if getattr(m, "coordinates", None) is not None]
    assert coordinates
    cfg = config(tmp_path, text_encoder_dir, image_folder, text_positions_lr=0.05)
    rest, order = parameter_groups(unet, cfg)
    assert {id(p) for p in order["params"]} == {id(unet.text_positions)} | {id(p) for p in coordinates}
    assert len(rest["params"]) + len(order["params"]) == len(list(unet.parameters()))


# --- config files ----------------------------------------------------------------------------------------------

def test_a_config_extends_another_with_only_the_keys_that_differ(tmp_path):
    base = dict(run_dir="runs/base", text_encoder="weights", resolution=32, lr=1e-3, threads=2,
                unet=dict(block_out_channels=[8, 16], norm_num_groups=4),
                curriculum=dict(keep={"flags": 0.2}, measure_every=100))
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "a.json").write_text(json.dumps({  # a path relative to the file that names it
        "extends": "../base.json", "run_dir": "runs/a", "threads": None, "unet": {"norm_num_groups": 8},
        "curriculum": {"keep": {"recoloured": 0.3}}}))
    (tmp_path / "experiments" / "b.json").write_text(json.dumps({"extends": "a.json", "unet": {"block_out_channels": [16]}}))
    cfg = TrainConfig.load(str(tmp_path / "experiments" / "b.json"), lr=5e-4, max_steps=None)  # as the CLI passes them
    assert cfg.run_dir == "runs/a" and cfg.resolution == 32 and cfg.lr == 5e-4 and cfg.max_steps == 100_000
    assert cfg.threads is None  # null replaces
    assert cfg.unet == dict(block_out_channels=[16], norm_num_groups=8)  # objects merge key by key, lists replace
    assert cfg.curriculum == dict(keep={"flags": 0.2, "recoloured": 0.3}, measure_every=100)
    assert TrainConfig.load(str(tmp_path / "base.json")) == TrainConfig(**base)  # a file without `extends`
    (tmp_path / "c.json").write_text(json.dumps({"extends": "d.json"}))
    (tmp_path / "d.json").write_text(json.dumps({"extends": "c.json"}))
    with pytest.raises(ValueError, match="circle"):
        TrainConfig.load(str(tmp_path / "c.json"))


def config_files():
    return sorted(os.path.relpath(p, ROOT) for folder in ("configs", os.path.join("configs", "experiments"))
                  for p in glob.glob(os.path.join(ROOT, folder, "*.json")))


def architecture(config) -> dict:
    """A U-Net config without the keys that only record where it came from; lists and tuples alike."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def test_the_configs_are_the_shipped_recipes_and_experiments():
    names = config_files()
    assert {"configs/base32.json", "configs/base32_gpu.json", "configs/sr128.json", "configs/sr512.json"} <= set(names)
    run_dirs = [TrainConfig.load(os.path.join(ROOT, name)).run_dir for name in names]
    assert len(set(run_dirs)) == len(run_dirs), "two configs would resume each other's checkpoints"
    for name in ("base32.json", "base32_gpu.json"):  # the base stage from scratch
        assert TrainConfig.load(os.path.join(ROOT, "configs", name)).init_from is None


@pytest.mark.parametrize("name", config_files())
@pytest.mark.slow  # loads the shipped U-Nets
def test_every_config_builds_the_unet_of_the_weights_it_starts_from(name, monkeypatch):
    """The U-Net that resuming and export_stage build from the config (its `unet` section) has the architecture
    and the very state dict keys of the one the run starts with: the stage `init_from`, or for a recipe from
    scratch the shipped stage of its resolution. Paths are relative to the repository, and none is under runs/
    (a clean clone has none)."""
    from imagen_app.training.export import text_embed_dim
    from imagen_app.training.train import initial_unet

    monkeypatch.chdir(ROOT)
    cfg = TrainConfig.load(name)
    assert not (cfg.init_from or "").startswith("runs"), f"{name} starts from a run that a clean clone has not"
    dim = text_embed_dim(cfg.text_encoder)
    own = ImagenUNet(**cfg.unet_arguments(dim))
    if cfg.init_from:
        start = initial_unet(cfg, dim, use_init_from=True, log=lambda *_: None)
    else:
        stage = [d for d in sorted(glob.glob(os.path.join(ROOT, "weights", "unet_*")))
                 if json.load(open(os.path.join(d, "config.json")))["sample_size"] == cfg.resolution]
        assert len(stage) == 1, f"no shipped stage at {cfg.resolution} px for {name}"
        start = ImagenUNet.from_pretrained(stage[0])
    assert architecture(own.config) == architecture(start.config)
    assert {k: v.shape for k, v in own.state_dict().items()} == {k: v.shape for k, v in start.state_dict().items()}
    own.load_state_dict(start.state_dict())  # strict: no missing or unexpected keys


def test_live_scenes_compose_the_scene_rows_of_a_batch(text_encoder_dir, image_folder, tmp_path, scene_world):
    import random

    from imagen_app.training.data import CaptionedImages, image_folder_dataset
    from imagen_app.training.scenes import FAMILY_PREFIX, LiveScenes
    from imagen_app.training.train import live_scenes, make_batch

    cfg = config(tmp_path, text_encoder_dir, image_folder, resolution=32, batch_size=16)
    plain = image_folder_dataset(image_folder, 32)
    with pytest.raises(ValueError, match="no scene rows"):  # asked for live scenes on a folder without any
        live_scenes(dataclasses.replace(cfg, live_scenes=True), plain)
    assert live_scenes(cfg, plain) is None
    with pytest.raises(ValueError, match="needs live_scenes"):  # would be silently ignored on stored scenes
        live_scenes(dataclasses.replace(cfg, scene_size_ranges={"colours": [0.8, 1.0]}), plain)
    stored = np.full((2, 32, 32, 3), 255, np.uint8)
    data = CaptionedImages(stored, [["panda"], ["a cat and a dog"]], ["single emoji", FAMILY_PREFIX + "two objects"])
    idx = [0, 1] * 8
    images, captions, _ = make_batch(data, cfg, random.Random(0), "cpu", idx, LiveScenes(scene_world, 32))
    assert captions[0::2] == ["panda"] * 8 and len(set(captions[1::2])) == 8  # a new pair at every draw
    assert (images[0::2] == 1).all() and (images[1::2] < 0).any(dim=(1, 2, 3)).all()  # the white row as stored; ink


def test_teacher_targets_hold_the_starting_stage_on_non_scene_rows(tmp_path, text_encoder_dir, image_folder):
    """With `teacher_target_weight` 1, a student equal to its teacher has zero loss on the rows the teacher holds
    (its own prediction is the target) and the plain diffusion loss on the other rows; weight 0.5 lands between."""
    from imagen_app.models.schedules import noise_schedule
    from imagen_app.training.train import diffusion_loss

    unet = ImagenUNet(sample_size=16, text_embed_dim=16, **TINY_UNET)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
    sched = noise_schedule()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    embeds, mask = torch.randn(4, 4, 16), torch.ones(4, 4, dtype=torch.bool)

    def loss(weight, rows):
        torch.manual_seed(0)
        cfg = config(tmp_path, text_encoder_dir, image_folder, teacher_target_weight=weight, cond_drop_prob=0.0)
        return diffusion_loss(unet, sched, images, embeds, mask, None, cfg, teacher=unet if weight else None,
                              teacher_rows=torch.tensor(rows)).item()

    plain = loss(0.0, [True] * 4)
    assert plain > 0
    assert loss(1.0, [True] * 4) == pytest.approx(0.0, abs=1e-12)
    half_rows = loss(1.0, [True, True, False, False])
    assert 0 < half_rows < plain
    assert half_rows < loss(0.5, [True, True, False, False]) < plain


def test_pooled_text_drop_leaves_out_the_pooled_vector_of_the_rows_drawn_and_not_the_teachers(
        tmp_path, text_encoder_dir, image_folder):
    """`pooled_text_keep` 0 leaves a row's pooled text vector out (that row alone); `pooled_text_drop_prob` 1 trains
    the U-Net without it, against a teacher that keeps it; 0 draws nothing (the RNG stream of older runs)."""
    from imagen_app.models.schedules import noise_schedule
    from imagen_app.training.train import diffusion_loss

    torch.manual_seed(0)
    unet = ImagenUNet(sample_size=16, text_embed_dim=16, **TINY_UNET)
    for module in unet.modules():  # zero output layers would hide the difference
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.weight.abs().sum() == 0:
            torch.nn.init.normal_(module.weight, std=0.1)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    embeds, mask = torch.randn(4, 4, 16), torch.ones(4, 4, dtype=torch.bool)
    t = torch.tensor([100, 300, 500, 700])
    with torch.no_grad():
        plain = unet(images, t, embeds, mask).sample
        kept = unet(images, t, embeds, mask, pooled_text_keep=torch.tensor([1.0, 0.0, 1.0, 0.0])).sample
        pool = unet.text_pool.forward
        unet.text_pool.forward = lambda c, m: torch.zeros_like(pool(c, m))
        without = unet(images, t, embeds, mask).sample
        unet.text_pool.forward = pool
    assert not torch.allclose(plain, without)
    assert torch.allclose(kept[0::2], plain[0::2]) and torch.allclose(kept[1::2], without[1::2], atol=1e-6)

    sched = noise_schedule()

    def loss(drop, teacher=None, weight=0.0):
        torch.manual_seed(0)
        cfg = config(tmp_path, text_encoder_dir, image_folder, cond_drop_prob=0.0, pooled_text_drop_prob=drop,
                     teacher_target_weight=weight)
        return diffusion_loss(unet, sched, images, embeds, mask, None, cfg, teacher=teacher,
                              teacher_rows=torch.ones(4, dtype=torch.bool)).item()

    assert loss(0.0, teacher=unet, weight=1.0) == pytest.approx(0.0, abs=1e-12)  # its own teacher, pooled vector kept
    assert loss(1.0, teacher=unet, weight=1.0) > 1e-4  # without it, the student no longer equals its teacher
    off = loss(0.0)
    torch.manual_seed(0)
    assert off == diffusion_loss(unet, sched, images, embeds, mask, None,
                                 config(tmp_path, text_encoder_dir, image_folder, cond_drop_prob=0.0)).item()
    with pytest.raises(ValueError, match="pooled_text_drop_prob"):
        config(tmp_path, text_encoder_dir, image_folder, pooled_text_drop_prob=1.5)


def test_a_run_with_teacher_targets_trains_and_needs_a_starting_stage(tmp_path, text_encoder_dir, image_folder):
    """A fine-tune with `teacher_target_weight` starts from `init_from` and trains; without `init_from` (no stage
    to hold) it is an error, not a silent plain run."""
    first = config(tmp_path, text_encoder_dir, image_folder, max_steps=2)
    assert train(first) == 2
    stage = tmp_path / "stage"
    export_stage(first.run_dir, str(stage))
    logged = []
    tuned = config(tmp_path, text_encoder_dir, image_folder, run_dir=str(tmp_path / "tuned"), init_from=str(stage),
                   teacher_target_weight=1.0, max_steps=2)
    assert train(tuned, log=logged.append) == 2
    assert any("own predictions" in line for line in logged)
    with pytest.raises(ValueError, match="init_from"):
        train(config(tmp_path, text_encoder_dir, image_folder, run_dir=str(tmp_path / "bad"), teacher_target_weight=1.0))


def test_bf16_mixed_precision_trains_in_bf16_with_fp32_weights(tmp_path, text_encoder_dir, image_folder):
    """`"mixed_precision": "bf16"` on the CPU (1.6x faster a step where the CPU has bf16 instructions): the forward
    really runs in bf16 (the weights differ from the same run in fp32 by rounding), the stored weights stay fp32, and
    the run learns as the fp32 one does (same seed: close weights). In its own process: accelerate fixes the mixed
    precision of a process at its first Accelerator."""
    from dataclasses import asdict

    runs = {}
    for precision in ("no", "bf16"):
        cfg = config(tmp_path / precision, text_encoder_dir, image_folder, max_steps=3, mixed_precision=precision,
                     teacher_target_weight=0.0)
        path = tmp_path / f"{precision}.json"
        path.write_text(json.dumps(asdict(cfg)))
        out = subprocess.run([sys.executable, "-m", "imagen_app", "train", str(path)], capture_output=True,
                             text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert f"mixed precision {precision}" in out.stdout + out.stderr
        runs[precision] = read_checkpoint(os.path.join(cfg.run_dir, CHECKPOINT))["unet"]
    fp32, bf16 = runs["no"], runs["bf16"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in bf16.values())
    moved = [k for k in fp32 if not torch.equal(fp32[k], bf16[k])]
    assert moved, "bf16 left the run bit-identical to fp32: autocast was not on"
    for key in moved:  # three steps at lr 1e-3: rounding-level differences, not another run
        torch.testing.assert_close(bf16[key], fp32[key], rtol=0.05, atol=2e-3, msg=key)


def test_other_rows_scale_shrinks_the_rows_that_are_not_scenes(text_encoder_dir, image_folder, tmp_path):
    """`other_rows_scale`: each row that is not a scene is shrunk to that fraction of the side and placed at a random
    place on white (all of its ink kept, nothing else drawn), stored or live; scene rows are untouched; a range
    outside (0, 1] is refused."""
    import random

    from imagen_app.training.data import CaptionedImages
    from imagen_app.training.scenes import FAMILY_PREFIX
    from imagen_app.training.train import make_batch

    stored = np.full((2, 64, 64, 3), 255, np.uint8)
    stored[0, 8:56, 8:56] = (200, 30, 30)  # a red square of 48 px on white
    stored[1, :, :32] = 0  # a "scene" row: left half black
    data = CaptionedImages(stored, [["red square"], ["a cat and a dog"]], ["single emoji", FAMILY_PREFIX + "two objects"])
    cfg = config(tmp_path, text_encoder_dir, image_folder, resolution=64, batch_size=12, other_rows_scale=[0.5, 0.5])
    images, captions, _ = make_batch(data, cfg, random.Random(0), "cpu", [0] * 11 + [1])
    pixels = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(int)
    corners = set()
    for image in pixels[:11]:
        ys, xs = np.where((255 - image).max(axis=2) > 24)
        assert 22 <= ys.max() - ys.min() + 1 <= 26 and 22 <= xs.max() - xs.min() + 1 <= 26  # 48 px * 0.5
        assert abs(image[int(ys.mean()), int(xs.mean()), 0] - 200) < 10  # still red
        corners.add((ys.min(), xs.min()))
    assert len(corners) > 6  # placed anywhere, not in one slot
    assert captions == ["red square"] * 11 + ["a cat and a dog"]
    assert np.array_equal(pixels[11], stored[1])  # the scene row as stored
    for bad in ([0.0, 0.5], [0.7, 0.5], [0.5, 1.5]):
        with pytest.raises(ValueError, match="other_rows_scale"):
            make_batch(data, dataclasses.replace(cfg, other_rows_scale=bad), random.Random(0), "cpu", [0, 1])


def test_other_rows_scale_share_shrinks_that_share_of_the_rows_that_are_not_scenes(text_encoder_dir, image_folder,
                                                                                   tmp_path):
    """`other_rows_scale_share`: each row that is not a scene is shrunk with that chance (scene rows never); the
    batch shrinks exactly the rows `rows_to_shrink` chose; at share 1 no chance is drawn (the RNG stream of the runs
    before the share existed); a share outside (0, 1] is refused."""
    import random

    from imagen_app.training.data import CaptionedImages
    from imagen_app.training.scenes import FAMILY_PREFIX
    from imagen_app.training.train import make_batch, rows_to_shrink

    stored = np.full((2, 64, 64, 3), 255, np.uint8)
    stored[0] = (200, 30, 30)  # an emoji row that fills the image: red everywhere until shrunk
    data = CaptionedImages(stored, [["red square"], ["a cat and a dog"]], ["single emoji", FAMILY_PREFIX + "two objects"])
    cfg = config(tmp_path, text_encoder_dir, image_folder, resolution=64, other_rows_scale=[0.5, 0.5],
                 other_rows_scale_share=0.5)
    idx = [0] * 200 + [1] * 20
    shrink = rows_to_shrink(data, idx, cfg, random.Random(0))
    assert 70 <= sum(shrink[:200]) <= 130 and not any(shrink[200:])
    images, _, _ = make_batch(data, cfg, random.Random(1), "cpu", idx[:40], shrink=shrink[:40])
    white = (images[:, :, 0, 0] > 0.99).all(dim=1)  # a shrunk row's corner is paper or its ink, often paper
    red_share = (images[:, 1] < 0).float().mean(dim=(1, 2))  # red: little green; white paper: all of it
    assert torch.equal(red_share < 0.5, torch.tensor(shrink[:40]))  # a quarter of the image red if shrunk, else all
    assert white.any()
    rng = random.Random(2)
    assert rows_to_shrink(data, idx, dataclasses.replace(cfg, other_rows_scale_share=1.0), rng) == [True] * 200 + [False] * 20
    assert rng.random() == random.Random(2).random()  # nothing drawn
    with pytest.raises(ValueError, match="other_rows_scale_share"):
        dataclasses.replace(cfg, other_rows_scale_share=0.0)


def test_a_folded_run_starts_as_its_stage_folded_trains_on_the_shifted_schedule_and_exports_for_the_pipeline(
        tmp_path, text_encoder_dir, image_folder, tiny_pipe):
    """`"unet": {"space_to_depth": 2}` with `init_from` a stage at half the side: the run starts as that stage folded
    (with_space_to_depth), trains, and its exported stage samples in a pipeline only on the shifted schedule."""
    from imagen_app.models.schedules import noise_schedule
    from imagen_app.pipeline.pipeline import ImagenPipeline
    from imagen_app.training.export import stage_schedule

    half = config(tmp_path, text_encoder_dir, image_folder, resolution=8, max_steps=2,
                  unet=dict(TINY_UNET, prediction_type="v_prediction"))
    train(half, log=lambda *_: None)
    export_stage(half.run_dir, str(tmp_path / "half"))
    logged = []
    folded = config(tmp_path, text_encoder_dir, image_folder, run_dir=str(tmp_path / "folded"), resolution=16,
                    max_steps=2, unet=dict(TINY_UNET, prediction_type="v_prediction", space_to_depth=2),
                    init_from=str(tmp_path / "half"), teacher_target_weight=1.0)
    assert train(folded, log=logged.append) == 2
    assert any("folded 2 x 2" in line for line in logged)
    export_stage(folded.run_dir, str(tmp_path / "stage"))
    stage = ImagenUNet.from_pretrained(str(tmp_path / "stage"))
    assert stage.config.space_to_depth == 2 and stage.config.sample_size == 16 and stage.conv_in.in_channels == 12

    schedule = stage_schedule(str(tmp_path / "stage"))
    assert not torch.equal(schedule.alphas_cumprod, noise_schedule("squaredcos_cap_v2", "v_prediction").alphas_cumprod)
    pipe = ImagenPipeline(tokenizer=tiny_pipe.tokenizer, text_encoder=tiny_pipe.text_encoder, unet_1=stage,
                          scheduler_1=schedule)
    image = pipe("red heart", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (16, 16)
    with pytest.raises(ValueError, match="shifted"):
        ImagenPipeline(tokenizer=tiny_pipe.tokenizer, text_encoder=tiny_pipe.text_encoder, unet_1=stage,
                       scheduler_1=noise_schedule("squaredcos_cap_v2", "v_prediction"))


def test_a_branched_run_goes_on_from_another_runs_checkpoint_with_the_modules_its_config_adds(
        tmp_path, text_encoder_dir, image_folder):
    """branch-run: the source's weights, EMA, optimizer state, step and schedule carry over; the local text pools
    the new config adds start at their initial values (zero queries) with no optimizer state, and training goes on
    from the source's step and moves them."""
    from imagen_app.training.train import branch_run

    source = config(tmp_path / "a", text_encoder_dir, image_folder, max_steps=4)
    assert train(source, log=lambda *_: None) == 4
    branched = config(tmp_path / "b", text_encoder_dir, image_folder, max_steps=6,
                      unet=dict(TINY_UNET, local_text_pool=True))
    path = branch_run(source.run_dir, branched, log=lambda *_: None)
    before, grown = read_checkpoint(os.path.join(source.run_dir, CHECKPOINT)), read_checkpoint(path)
    new = sorted(set(grown["unet"]) - set(before["unet"]))
    assert new and all(".text_pool." in name for name in new)
    assert all(not grown["unet"][name].any() for name in new if name.endswith("to_q.weight"))
    for part in ("unet", "ema"):
        for name, value in before[part].items():
            torch.testing.assert_close(grown[part][name], value, rtol=0, atol=0)
    assert grown["step"] == 4 and grown["lr_scheduler"] == before["lr_scheduler"]
    assert len(grown["opt"]["state"]) == len(before["opt"]["state"])  # the new parameters have none yet
    with pytest.raises(FileExistsError):
        branch_run(source.run_dir, branched, log=lambda *_: None)
    from dataclasses import asdict

    from imagen_app.cli import main

    config_file = tmp_path / "branched.json"
    config_file.write_text(json.dumps(asdict(branched)))
    assert main(["branch-run", str(tmp_path / "missing"), str(config_file), "--run-dir", str(tmp_path / "c")]) == 2
    assert main(["branch-run", source.run_dir, str(config_file)]) == 2  # b already holds one: a message, no trace

    logs = []
    assert train(branched, log=logs.append) == 6
    assert any("resumed" in m and "step 4" in m for m in logs)
    after = read_checkpoint(os.path.join(branched.run_dir, CHECKPOINT))
    assert any(after["unet"][name].any() for name in new if name.endswith("to_q.weight"))


def test_scene_objects_needs_live_scenes_and_a_count():
    from imagen_app.training.config import TrainConfig

    required = dict(run_dir="runs/x", text_encoder="weights/text_encoder", resolution=64)
    with pytest.raises(ValueError, match="needs live_scenes"):
        TrainConfig(**required, scene_objects=16)
    with pytest.raises(ValueError, match="a number of objects"):
        TrainConfig(**required, live_scenes=True, scene_objects=-1)
    assert TrainConfig(**required, live_scenes=True, scene_objects=16).scene_objects == 16
