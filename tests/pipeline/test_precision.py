"""bf16 autocast of the U-Net calls on a CPU with bf16 instructions (imagen_app/pipeline/precision.py)."""
import numpy as np
import pytest
import torch

from imagen_app.pipeline.precision import ENV, default_cpu_bf16, unet_autocast

from conftest import seeded


def test_the_environment_variable_overrides_the_cpu_probe(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert default_cpu_bf16() is False
    monkeypatch.setenv(ENV, "1")
    assert default_cpu_bf16() is True
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(ValueError, match=ENV):
        default_cpu_bf16()


def test_autocast_only_for_a_float32_module_on_the_cpu_when_enabled():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with unet_autocast(layer, True):
        assert layer(x).dtype == torch.bfloat16
    with unet_autocast(layer, False):
        assert layer(x).dtype == torch.float32
    half = torch.nn.Linear(8, 8).to(torch.bfloat16)  # already reduced precision: runs as it is
    with unet_autocast(half, True):
        assert half(x.to(torch.bfloat16)).dtype == torch.bfloat16
        assert not torch.is_autocast_enabled("cpu")


def test_the_cascade_in_bf16_draws_the_float32_image_within_rounding(tiny_pipe):
    """The switch changes every U-Net call (the images differ) but not what is drawn (close to the float32 run),
    and the images and previews stay float32 PIL images of the same sizes."""
    before = tiny_pipe.cpu_bf16
    try:
        runs = {}
        for on in (False, True):
            tiny_pipe.cpu_bf16 = on
            out = tiny_pipe("red heart", num_inference_steps=4, generator=seeded(3))
            runs[on] = [np.asarray(im, dtype=np.float32) for stage in out.stage_images for im in stage]
        for fp32, bf16 in zip(runs[False], runs[True]):
            assert fp32.shape == bf16.shape
            assert np.abs(fp32 - bf16).max() > 0  # bf16 was really used
            assert np.abs(fp32 - bf16).mean() < 1.5  # of 255: rounding, not another image
    finally:
        tiny_pipe.cpu_bf16 = before
