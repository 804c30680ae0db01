import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_unet
from imagen_app.training.stage_average import average_stages
from imagen_app.models.unet import ImagenUNet


@pytest.fixture
def two_stages(tmp_path):
    """Two saved stages of one architecture with different weights."""
    a, b = small_unet(), small_unet()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "training.json").write_text(json.dumps({"steps": 7, "schedule": "squaredcos_cap_v2"}))
    return a, b, tmp_path


def test_every_parameter_is_the_weighted_mean(two_stages):
    a, b, tmp = two_stages
    average_stages([str(tmp / "a"), str(tmp / "b")], str(tmp / "mean"), weights=[0.25, 0.75], fp16=False)
    mean = ImagenUNet.from_pretrained(tmp / "mean")
    for name, p in mean.state_dict().items():
        torch.testing.assert_close(p, 0.25 * a.state_dict()[name] + 0.75 * b.state_dict()[name])
    record = json.loads((tmp / "mean" / "training.json").read_text())
    assert [s["weight"] for s in record["averaged_from"]] == [0.25, 0.75]
    assert record["averaged_from"][0]["training"]["steps"] == 7 and record["averaged_from"][1]["training"] is None
    assert record["schedule"] == "squaredcos_cap_v2"  # what `assemble` reads


def test_all_weight_on_one_stage_draws_as_that_stage(two_stages):
    a, _, tmp = two_stages
    average_stages([str(tmp / "a"), str(tmp / "b")], str(tmp / "same"), weights=[1.0, 0.0], fp16=False)
    same = ImagenUNet.from_pretrained(tmp / "same").eval()
    x, t, text = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.randn(2, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(same(x, t, text), a(x, t, text))


def test_refuses_other_architectures_and_bad_weights(two_stages, tmp_path):
    _, _, tmp = two_stages
    small_unet(pixel_coordinates=True).save_pretrained(tmp / "other")
    with pytest.raises(ValueError, match="another config"):
        average_stages([str(tmp / "a"), str(tmp / "other")], str(tmp / "x"))
    with pytest.raises(ValueError, match="sum to"):
        average_stages([str(tmp / "a"), str(tmp / "b")], str(tmp / "x"), weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="at least two"):
        average_stages([str(tmp / "a")], str(tmp / "x"))


def test_cli_writes_an_fp16_stage(two_stages):
    from imagen_app.cli import main

    a, b, tmp = two_stages
    assert main(["average-stages", str(tmp / "cli"), str(tmp / "a"), str(tmp / "b"), "--fp16"]) == 0
    stored = load_file(tmp / "cli" / "diffusion_pytorch_model.safetensors")  # from_pretrained upcasts on a CPU
    assert {p.dtype for p in stored.values()} == {torch.float16}
    for name, p in stored.items():
        torch.testing.assert_close(p, ((a.state_dict()[name] + b.state_dict()[name]) / 2).half())
