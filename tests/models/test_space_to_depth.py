"""A base stage folded by space_to_depth: the shifted schedule, and the folded stage drawing what the unfolded one drew."""
import math

import pytest
import torch
import torch.nn.functional as F

from imagen_app.models.schedules import noise_schedule, space_to_depth_alphas_cumprod
from imagen_app.models.unet import ImagenUNet, with_space_to_depth
from imagen_app.training.tiny import tiny_unet


def random_stage(size=8, seed=0) -> ImagenUNet:
    torch.manual_seed(seed)
    unet = tiny_unet(size, lowres=False, text_dim=16, prediction_type="v_prediction")
    for module in unet.modules():  # the zero-initialised output layer would make every prediction 0
        if isinstance(module, torch.nn.Conv2d) and module.weight.abs().sum() == 0:
            torch.nn.init.normal_(module.weight, std=0.05)
            torch.nn.init.normal_(module.bias, std=0.05)
    return unet.eval()


def test_the_shifted_schedule_is_2_ln_f_noisier_in_log_snr_and_saved_as_trained_betas():
    plain = noise_schedule("squaredcos_cap_v2", "v_prediction")
    folded = noise_schedule("squaredcos_cap_v2", "v_prediction", space_to_depth=2)
    shift = torch.logit(plain.alphas_cumprod.double()) - torch.logit(folded.alphas_cumprod.double())
    assert torch.allclose(shift[:900], torch.full((900,), 2 * math.log(2), dtype=torch.float64), atol=1e-3)
    assert folded.config.trained_betas is not None and len(folded.config.trained_betas) == 1000
    reloaded = type(folded).from_config(folded.config)
    assert torch.equal(reloaded.alphas_cumprod, folded.alphas_cumprod)
    assert torch.equal(space_to_depth_alphas_cumprod("squaredcos_cap_v2", 2), folded.alphas_cumprod)


@pytest.mark.parametrize("timestep", [0, 250, 640.5, 999])
def test_a_folded_stage_predicts_the_x0_of_the_unfolded_stage_on_the_block_means(timestep):
    small = random_stage(8)
    big = with_space_to_depth(small, 2)
    assert big.config.sample_size == 16 and big.config.space_to_depth == 2
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    t = torch.full((2,), float(timestep))
    with torch.no_grad():
        v_big = big(x, t, text, mask).sample

    # by hand: the block means, at the noise level of the unshifted schedule, through the small stage
    alpha_bar = space_to_depth_alphas_cumprod("squaredcos_cap_v2", 2).double()
    log_snr = torch.logit(alpha_bar)
    low = int(timestep)
    a_bar = torch.sigmoid(torch.lerp(log_snr[low], log_snr[min(low + 1, 999)], timestep - low)).float()
    alpha, sigma = a_bar.sqrt(), (1 - a_bar).sqrt()
    norm = (alpha ** 2 + (sigma / 2) ** 2).sqrt()
    z = F.avg_pool2d(x, 2) / norm
    with torch.no_grad():
        v_small = small(z, t, text, mask).sample
    x0_small = alpha / norm * z - sigma / 2 / norm * v_small
    x0_big = alpha * x - sigma * v_big  # v-parameterisation: x0 = alpha x - sigma v
    assert torch.allclose(x0_big, F.interpolate(x0_small, scale_factor=2, mode="nearest"), atol=2e-4)
    assert x0_small.std() > 0.05  # the comparison is not between zeros


def test_a_folded_stage_learns_finer_detail_than_its_blocks():
    """Its output is no longer block-constant once the folded output layer differs between a block's pixels."""
    big = with_space_to_depth(random_stage(8), 2)
    with torch.no_grad():
        big.conv_out.weight[1::4] += 0.05 * torch.randn_like(big.conv_out.weight[1::4])
        x, t = torch.randn(1, 3, 16, 16), torch.tensor([300])
        v = big(x, t, torch.randn(1, 5, 16), torch.ones(1, 5, dtype=torch.bool)).sample
    levels = big._folded_noise_levels(t)
    x0 = levels["alpha"] * x - levels["sigma"] * v
    blocks = F.interpolate(F.avg_pool2d(x0, 2), scale_factor=2, mode="nearest")
    assert (x0 - blocks).abs().max() > 1e-3


def test_folding_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="v-prediction base"):
        ImagenUNet(sample_size=16, block_out_channels=(8, 16), layers_per_block=(1, 1),
                   cross_attention_levels=(False, True), self_attention_levels=(False, True), text_embed_dim=16,
                   attention_head_dim=8, norm_num_groups=4, space_to_depth=2)  # epsilon
    with pytest.raises(ValueError, match="divisor"):
        ImagenUNet(sample_size=15, space_to_depth=2, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="already folded"):
        with_space_to_depth(with_space_to_depth(random_stage(8), 2), 2)


def test_a_folded_stage_saves_and_loads(tmp_path):
    big = with_space_to_depth(random_stage(8), 2)
    big.save_pretrained(tmp_path)
    again = ImagenUNet.from_pretrained(tmp_path)
    assert again.config.space_to_depth == 2 and again.config.sample_size == 16
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    text, mask = torch.randn(1, 5, 16), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(big(x, t, text, mask).sample, again(x, t, text, mask).sample, atol=1e-5)


def test_with_a_detail_std_the_blocks_stay_and_the_detail_starts_as_the_wiener_estimate_from_the_input():
    """`space_to_depth_detail_std` c: the block means of x0 are still the unfolded stage's; within a block, x0 is
    alpha c^2 / (alpha^2 c^2 + sigma^2) x the input's detail plus sigma c / sqrt(...) x the output's (0 at the start),
    so the stage learns detail with outputs of unit size at every noise level."""
    small = random_stage(8)
    exact, detailed = with_space_to_depth(small, 2), with_space_to_depth(small, 2, detail_std=0.1)
    assert detailed.config.space_to_depth_detail_std == 0.1
    torch.manual_seed(2)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 700])
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    levels = detailed._folded_noise_levels(t)
    with torch.no_grad():
        x0_exact = levels["alpha"] * x - levels["sigma"] * exact(x, t, text, mask).sample
        x0 = levels["alpha"] * x - levels["sigma"] * detailed(x, t, text, mask).sample

    def blocks(image):
        return F.interpolate(F.avg_pool2d(image, 2), scale_factor=2, mode="nearest")

    assert torch.allclose(blocks(x0), x0_exact, atol=1e-4)
    alpha, sigma = levels["alpha"], levels["sigma"]
    wiener = alpha * 0.01 / (alpha ** 2 * 0.01 + sigma ** 2)
    assert torch.allclose(x0 - blocks(x0), wiener * (x - blocks(x)), atol=1e-4)
    assert (x0 - blocks(x0)).abs().max() > 1e-3
