"""The local text pool (models/unet.py `local_text_pool`): the text pooled per pixel of each level."""
import torch

from imagen_app.models.unet import ImagenUNet, LocalTextPool
from imagen_app.training.grounding import AttentionGrabber

from conftest import SMALL_UNET, small_unet


def _inputs():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    embeds = torch.randn(2, 4, 16)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return x, torch.tensor([100, 700]), embeds, mask


def _with_local_pools(unet: ImagenUNet) -> ImagenUNet:
    local = ImagenUNet(**{**dict(unet.config), "local_text_pool": True}).eval()
    missing, unexpected = local.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and missing and all(".text_pool." in name for name in missing)
    return local


def test_a_stage_given_local_pools_draws_as_before_until_its_queries_learn():
    """The queries start at zero: every pixel pools the one pooled vector, so the prediction is unchanged (also with
    the pooled vector left out of a row); a query makes the pixels pool differently, and the prediction moves."""
    unet = small_unet()
    local = _with_local_pools(unet)
    x, t, embeds, mask = _inputs()
    keep = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        for extra in ({}, {"pooled_text_keep": keep}):
            torch.testing.assert_close(local(x, t, embeds, mask, **extra).sample, unet(x, t, embeds, mask, **extra).sample,
                                       rtol=0, atol=1e-5)
        pools = [m for m in local.modules() if isinstance(m, LocalTextPool)]
        assert len(pools) == 2 * len(SMALL_UNET["block_out_channels"]) + 1  # one per level, down, mid and up
        for pool in pools:
            torch.nn.init.normal_(pool.to_q.weight, std=1.0)
        moved = local(x, t, embeds, mask).sample
    assert (moved - unet(x, t, embeds, mask).sample).abs().max() > 1e-3


def test_local_pools_give_each_pixel_its_own_tokens_and_the_grounding_loss_their_maps():
    """A query that reads the pixel's features: pixels whose features differ pool different tokens (one-head maps
    of the pool's weights, which the grounding loss's grabber takes beside the cross-attention layers' maps)."""
    pool = LocalTextPool(channels=4, context_dim=2, groups=1)
    with torch.no_grad():
        pool.to_q.weight.copy_(torch.tensor([[8.0, 0, 0, 0], [0, 0, 0, 0]]))
    x = torch.zeros(1, 4, 2, 2)
    x[0, 0, :, 0], x[0, 0, :, 1] = 1.0, -1.0  # left column and right column differ in channel 0
    context = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])  # token 0 answers the left, token 1 the right
    keys = context.clone()
    pooled = pool(x, context, torch.ones(1, 3, dtype=torch.bool), keys, torch.zeros(1, 3))
    assert pooled.shape == (1, 2, 2, 2)
    assert pooled[0, :, 0, 0].min() > 0.5 and pooled[0, :, 1, 0].max() < -0.5  # left pools token 0, right token 1

    local = _with_local_pools(small_unet())
    x, t, embeds, mask = _inputs()
    with AttentionGrabber(local, min_side=1) as grabber:
        local(x, t, embeds, mask)
    one_head = [probs for probs, _, _ in grabber.taken if probs.shape[1] == 1]
    assert len(one_head) == 5  # every level's pool (the cross-attention layers' maps come beside them)
    for probs in one_head:
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
        assert float(probs[0, ..., -1].max()) == 0.0  # the masked token gets nothing


def test_a_saved_stage_loaded_with_local_pools_starts_with_zero_queries(tmp_path):
    """How a run starts from an exported stage (`init_from` with "local_text_pool" in its unet): diffusers builds the
    model with some nn.init functions skipped, and the new pools must still start at zero queries and unit norms."""
    unet = small_unet()
    unet.save_pretrained(tmp_path / "stage")
    loaded = ImagenUNet.from_pretrained(tmp_path / "stage", low_cpu_mem_usage=False, local_text_pool=True).eval()
    pools = [m for m in loaded.modules() if isinstance(m, LocalTextPool)]
    assert pools and all(not p.to_q.weight.any() and bool((p.norm.weight == 1).all()) for p in pools)
    x, t, embeds, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, embeds, mask).sample, unet(x, t, embeds, mask).sample, rtol=0, atol=1e-5)
