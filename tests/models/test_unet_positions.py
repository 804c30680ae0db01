"""Text position embeddings of the U-Net: without them the text is a set of tokens (the swapped two-tone
caption was the same condition); with them order counts; at zero they change nothing, so a trained stage
can take them on."""
import torch

from imagen_app.models.unet import ImagenUNet

from conftest import SMALL_UNET as SMALL, small_unet


def inputs():
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 3, 8, 8, generator=g)
    tokens = torch.randn(1, 5, 16, generator=g)
    swapped = tokens[:, [0, 3, 2, 1, 4]]  # the words at places 1 and 3 exchanged, as in the two-tone captions
    return sample, torch.tensor([400]), tokens, swapped


@torch.no_grad()
def test_without_positions_the_text_is_a_set_of_tokens():
    unet = small_unet()
    sample, t, tokens, swapped = inputs()
    out = unet(sample, t, tokens).sample
    torch.testing.assert_close(out, unet(sample, t, swapped).sample, rtol=0, atol=1e-5)
    assert (out - unet(sample, t, tokens[:, [0, 1, 2, 4]]).sample).abs().max() > 1e-2  # the text does matter


@torch.no_grad()
def test_learned_positions_make_word_order_count():
    unet = small_unet(text_position_embeddings=8)
    torch.nn.init.normal_(unet.text_positions, std=1.0)
    sample, t, tokens, swapped = inputs()
    assert (unet(sample, t, tokens).sample - unet(sample, t, swapped).sample).abs().max() > 1e-2
    # a text longer than the embedding table runs: its tokens past the table get no position
    long = torch.randn(1, 12, 16)
    assert unet(sample, t, long).sample.shape == sample.shape


@torch.no_grad()
def test_a_trained_stage_takes_on_zero_positions_and_keeps_them_when_saved(tmp_path):
    plain = small_unet()
    assert plain.text_positions is None
    plain.save_pretrained(tmp_path / "plain")
    with_positions = ImagenUNet.from_pretrained(tmp_path / "plain", text_position_embeddings=8, low_cpu_mem_usage=False)
    assert with_positions.text_positions.shape == (8, 16) and not with_positions.text_positions.any()
    sample, t, tokens, _ = inputs()
    mask = torch.tensor([[True, True, True, False, False]])
    torch.testing.assert_close(with_positions(sample, t, tokens, mask).sample, plain(sample, t, tokens, mask).sample)
    torch.nn.init.normal_(with_positions.text_positions)
    with_positions.save_pretrained(tmp_path / "positions")
    loaded = ImagenUNet.from_pretrained(tmp_path / "positions")
    assert loaded.config.text_position_embeddings == 8
    torch.testing.assert_close(loaded.text_positions, with_positions.text_positions, rtol=0, atol=0)


def test_positions_may_start_as_scaled_sinusoids():
    from imagen_app.models.unet import sinusoidal_embedding

    unet = ImagenUNet(**SMALL, text_position_embeddings=6, text_position_init_scale=0.5)
    expected = sinusoidal_embedding(torch.arange(6), 16) * 0.5
    torch.testing.assert_close(unet.text_positions.detach(), expected)
    assert unet.text_positions.norm(dim=1).allclose(torch.full((6,), 0.5 * 8 ** 0.5))  # sqrt(dim / 2) x scale


@torch.no_grad()
def test_pixel_grid_follows_the_flattened_feature_map():
    from imagen_app.models.unet import pixel_grid

    grid = pixel_grid(2, 4)
    assert grid.shape == (8, 2)
    # row by row: x runs left to right within a row, y top to bottom between rows
    torch.testing.assert_close(grid[:4, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(grid[:, 1], torch.tensor([-0.5] * 4 + [0.5] * 4))


@torch.no_grad()
def test_pixel_coordinates_start_at_zero_and_then_let_a_query_tell_left_from_right(tmp_path):
    plain = small_unet(text_position_embeddings=8)
    plain.save_pretrained(tmp_path / "plain")
    located = ImagenUNet.from_pretrained(tmp_path / "plain", pixel_coordinates=True, low_cpu_mem_usage=False)
    coordinate_layers = [m.coordinates for m in located.modules() if getattr(m, "coordinates", None) is not None]
    assert coordinate_layers and not any(layer.weight.any() for layer in coordinate_layers)
    sample, t, tokens, _ = inputs()
    torch.testing.assert_close(located(sample, t, tokens).sample, plain(sample, t, tokens).sample)



@torch.no_grad()
def test_with_pixel_coordinates_an_attention_layer_tells_left_from_right():
    from imagen_app.models.unet import TextAttention

    torch.manual_seed(0)
    # A feature map the same at every pixel: without coordinates every query is the same, so is every output.
    flat = torch.randn(1, 16, 1, 1).expand(1, 16, 4, 6).contiguous()
    context, mask = torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool)
    for self_attention in (False, True):
        blind = TextAttention(16, 16, 8, 4, self_attention)
        torch.nn.init.normal_(blind.to_out.weight, std=0.5)  # the output projection starts at zero: open it
        out = blind(flat, context, mask)
        assert (out - out[..., :1, :1]).abs().max() < 1e-5
        located = TextAttention(16, 16, 8, 4, self_attention, pixel_coordinates=True)
        located.load_state_dict(blind.state_dict(), strict=False)
        torch.testing.assert_close(located(flat, context, mask), out)  # zero coordinates change nothing
        torch.nn.init.normal_(located.coordinates.weight, std=1.0)
        out = located(flat, context, mask)
        assert (out[..., 0] - out[..., -1]).abs().max() > 1e-2  # left column and right column now differ
