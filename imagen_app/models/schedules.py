"""Training noise schedules: the forward process a stage is trained on, saved with it."""
import functools
import math

import torch
from diffusers import DDPMScheduler


def noise_schedule(beta_schedule: str = "squaredcos_cap_v2", prediction_type: str = "epsilon",
                   space_to_depth: int = 1) -> DDPMScheduler:
    """The training noise schedule of a stage, saved with it; samplers are built from its config.

    v-prediction stages space their sampling steps "trailing" (Lin et al. 2023, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed", Table 2): the first step is at t = T - 1, where the
    input really is pure noise. diffusers' default "leading" spacing starts at t = T - T/n (888 of 1000
    at 8 steps), so a few-step sampler treats pure noise as a partly clean image and leaves grain in
    the output (measured on the shipped 32->128 stage: SSIM 0.65 -> 0.89 at 8 steps). Epsilon stages
    keep "leading": at t = T - 1 of the cosine schedule x0 = (x - sigma eps) / alpha with alpha = 5e-5,
    which float32 cannot resolve (Euler samplers even return NaN).

    A stage that folds each `space_to_depth` x `space_to_depth` block of pixels into channels (ImagenUNet's
    `space_to_depth`) runs on the schedule shifted by -2 ln(space_to_depth) in log signal-to-noise ratio
    (Hoogeboom et al. 2023, "simple diffusion", §3.1): the mean of f x f pixels carries 1/f of their noise, so at
    every timestep the stage's f-times-smaller view of the image is exactly as noisy as the images of the
    unfolded schedule, and a stage trained at the smaller size draws at the larger one from its first step. The
    shifted schedule is saved as `trained_betas`, so every sampler built from the config runs on it.
    """
    spacing = "trailing" if prediction_type == "v_prediction" else "leading"
    if space_to_depth == 1:
        return DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing)
    unshifted = DDPMScheduler(beta_schedule=beta_schedule).alphas_cumprod.double()
    shifted = torch.sigmoid(torch.logit(unshifted) - 2 * math.log(space_to_depth))
    betas = 1 - shifted / torch.cat([shifted.new_ones(1), shifted[:-1]])
    return DDPMScheduler(beta_schedule=beta_schedule, trained_betas=betas.clamp(max=0.999).tolist(),
                         prediction_type=prediction_type, timestep_spacing=spacing)


def stage_noise_schedule(beta_schedule: str, unet_config) -> DDPMScheduler:
    """The noise schedule of the stage whose U-Net has `unet_config` (a config or its dict: prediction type, folding)."""
    return noise_schedule(beta_schedule, unet_config["prediction_type"], unet_config.get("space_to_depth", 1))


@functools.lru_cache(maxsize=8)
def space_to_depth_alphas_cumprod(beta_schedule: str, space_to_depth: int) -> torch.Tensor:
    """(T,) float32: the alpha-bar of the shifted schedule, exactly the samplers' (made by `noise_schedule`)."""
    return noise_schedule(beta_schedule, "v_prediction", space_to_depth).alphas_cumprod.clone()


@functools.lru_cache(maxsize=8)
def space_to_depth_log_snr(beta_schedule: str, space_to_depth: int) -> torch.Tensor:
    """(T,) float64: the log-SNR of that alpha-bar, which a folded U-Net reads at every call (made once)."""
    return torch.logit(space_to_depth_alphas_cumprod(beta_schedule, space_to_depth).double())


def check_stage_schedule(name: str, unet_config, scheduler) -> None:
    """A folded stage samples right only on the schedule it was shifted for: refuse any other (the unshifted one
    would make it draw from noise it reads as 4x weaker, and the image comes out as texture)."""
    fold = unet_config.get("space_to_depth", 1)
    if fold == 1:
        return
    expected = space_to_depth_alphas_cumprod(unet_config["space_to_depth_schedule"], fold)
    found = getattr(scheduler, "alphas_cumprod", None)
    if found is None or found.shape != expected.shape or not torch.allclose(found.float(), expected, rtol=1e-4, atol=1e-7):
        raise ValueError(f"{name} is folded {fold} x {fold} and needs the schedule shifted for it: "
                         f"noise_schedule({unet_config['space_to_depth_schedule']!r}, 'v_prediction', space_to_depth={fold})")
