"""The base U-Net's text path traced once for text tuning (the "layers" objective of tune-text)."""
import torch

from imagen_app.models.unet import TextAttention


def _random_layer(self_attention: bool) -> TextAttention:
    torch.manual_seed(0)
    layer = TextAttention(16, context_dim=8, head_dim=8, groups=4, self_attention=self_attention, pixel_coordinates=True)
    for p in layer.parameters():  # (the output projection and the coordinates start at zero)
        torch.nn.init.normal_(p, std=0.3)
    return layer.eval()


def test_a_layer_split_into_its_text_free_and_text_sides_is_the_layer():
    """forward = x + text_side(pixel_side(...)); a cross-attention-only layer on some of its pixels gives those
    pixels' outputs exactly (they do not see each other)."""
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    for self_attention in (False, True):
        layer = _random_layer(self_attention)
        tokens = layer.norm(x).flatten(2).transpose(1, 2)
        whole = layer.attend(tokens, 4, 4, context, mask)
        assert torch.allclose(layer(x, context, mask), x + whole.transpose(1, 2).view(2, 16, 4, 4), atol=1e-6)
        assert not torch.allclose(whole, layer.attend(tokens, 4, 4, context.flip(1), mask), atol=1e-3)  # the text counts
    layer = _random_layer(False)
    tokens = layer.norm(x).flatten(2).transpose(1, 2)
    keep = torch.tensor([[0, 5, 15], [3, 4, 9]])
    part = layer.text_side(*layer.pixel_side(tokens.gather(1, keep[..., None].expand(-1, -1, 16)), 4, 4, pixels=keep),
                           context, mask)
    assert torch.allclose(part, layer.attend(tokens, 4, 4, context, mask).gather(1, keep[..., None].expand(-1, -1, 16)),
                          atol=1e-6)


def test_traces_score_a_name_against_itself_as_zero_and_trace_only_what_is_asked(tiny_pipe):
    from imagen_app.models.schedules import noise_schedule
    from imagen_app.models.text_encoder import PromptEncoder
    from imagen_app.training.attention_traces import AttentionTraces

    unet = tiny_pipe.unets[0].float().eval()
    names = ["red heart", "panda", "flag: japan", "grinning face"]
    renders = torch.rand(len(names), 3, unet.config.sample_size, unet.config.sample_size) * 2 - 1
    teacher = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder)
    traces = AttentionTraces(unet, noise_schedule("squaredcos_cap_v2", "epsilon"), renders, names, teacher, draws=2)
    generator = torch.Generator().manual_seed(0)
    rows = traces.sample_rows(["red heart", "panda", "red heart"], generator)
    assert traces.traced.tolist() == [True, True, False, False]  # traced when first asked for
    assert rows[0] // 2 == 0 and rows[1] // 2 == 1
    own = traces.loss(rows, *teacher.encode(["red heart", "panda", "red heart"]))
    other = traces.loss(rows, *teacher.encode(["grinning face", "flag: japan", "panda"]))
    assert own.item() < 1e-5 < 1e-2 < other.item()
    # per row: a name against itself scores zero, against another emoji not (what tune-text takes the least of)
    mixed = traces.errors(rows, *teacher.encode(["red heart", "flag: japan", "red heart"]))
    assert mixed.shape == (3,) and mixed[0] < 1e-5 and mixed[2] < 1e-5 < 1e-2 < mixed[1]


def test_the_layers_anchor_is_zero_for_the_teacher_and_grows_with_a_moved_caption(tiny_pipe):
    """anchor_loss compares a caption's effects under the student and the teacher on other emoji's traced pixels."""
    from imagen_app.models.schedules import noise_schedule
    from imagen_app.models.text_encoder import PromptEncoder
    from imagen_app.training.attention_traces import AttentionTraces

    unet = tiny_pipe.unets[0].float().eval()
    names = ["red heart", "panda"]
    renders = torch.rand(len(names), 3, unet.config.sample_size, unet.config.sample_size) * 2 - 1
    teacher = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder)
    traces = AttentionTraces(unet, noise_schedule("squaredcos_cap_v2", "epsilon"), renders, names, teacher, draws=2)
    rows = traces.sample_rows(["panda", "red heart"], torch.Generator().manual_seed(0))
    captions = ["grinning face", "flag: japan"]  # not traced: their effects come from the teacher's embeddings
    fixed, mask = teacher.encode(captions)
    assert traces.anchor_loss(rows, fixed, mask, fixed, mask).item() < 1e-6
    nudged = fixed + 0.05 * torch.randn(fixed.shape, generator=torch.Generator().manual_seed(1)) * mask[..., None]
    moved = fixed + 0.5 * torch.randn(fixed.shape, generator=torch.Generator().manual_seed(1)) * mask[..., None]
    small, large = (traces.anchor_loss(rows, e, mask, fixed, mask).item() for e in (nudged, moved))
    assert 0 < small < large


def test_traces_refuse_a_unet_whose_text_is_pooled_per_pixel(tiny_pipe):
    """A U-Net with local text pools reads its text in a third place the traces do not hold: a clear error, not a
    tuned text encoder that draws something else."""
    import pytest

    from imagen_app.models.schedules import noise_schedule
    from imagen_app.models.text_encoder import PromptEncoder
    from imagen_app.models.unet import ImagenUNet
    from imagen_app.training.attention_traces import AttentionTraces

    config = {k: v for k, v in tiny_pipe.unets[0].config.items() if not k.startswith("_")}
    unet = ImagenUNet(**{**config, "local_text_pool": True})
    teacher = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder)
    with pytest.raises(ValueError, match="local_text_pool"):
        AttentionTraces(unet, noise_schedule("squaredcos_cap_v2", "epsilon"), torch.zeros(1, 3, 8, 8), ["panda"], teacher)
