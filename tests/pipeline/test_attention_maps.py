"""Cross-attention maps: what the recorder extracts, per word, at no cost when off."""
import torch

from imagen_app.pipeline.attention_maps import CrossAttentionRecorder, overlay, word_maps
from imagen_app.training.tiny import TINY_CAPTIONS, tiny_unet
from imagen_app.training.text_pretrain import train_caption_tokenizer
from imagen_app.models.unet import TextAttention

from conftest import generate_named


def test_recorder_finds_the_token_the_layer_attends_to():
    """A cross-attention layer whose queries match token 2's key only: its map is 1 on token 2, 0 elsewhere."""
    torch.manual_seed(0)
    layer = TextAttention(channels=8, context_dim=4, head_dim=4, groups=2, self_attention=False)
    with torch.no_grad():
        layer.to_q.weight.zero_()
        layer.to_q.bias = None
        layer.norm.weight.zero_()
        layer.norm.bias.fill_(1.0)  # normalised pixels are all ones -> every query is the same vector
        layer.to_q.weight.fill_(1.0)
        layer.context_kv.weight.zero_()
        layer.context_kv.weight[:8, 2] = 50.0  # only context dimension 2 makes a key that matches the queries
    context = torch.zeros(1, 4, 4)
    context[0, 2, 2] = 1.0  # token 2 carries that dimension
    mask = torch.ones(1, 4, dtype=torch.bool)
    rec = CrossAttentionRecorder(layer, size=6)
    with rec:
        layer(torch.randn(1, 8, 3, 3), context, mask)
    assert layer.recorders == {}  # removed on exit
    maps = rec.maps()
    assert maps.shape == (1, 4, 6, 6)
    assert torch.allclose(maps[0, 2], torch.ones(6, 6), atol=1e-4)
    assert maps[0, [0, 1, 3]].abs().max() < 1e-4


def test_recording_does_not_change_the_output_and_maps_are_shares():
    torch.manual_seed(0)
    unet = tiny_unet(16, lowres=False, text_dim=16).eval()
    for m in unet.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.abs().sum() == 0:
            torch.nn.init.normal_(m.weight, std=0.1)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([500, 500])
    emb, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    plain = unet(x, t, emb, mask).sample
    rec = CrossAttentionRecorder(unet, size=16, rows=slice(0, 1))
    with rec:
        recorded = unet(x, t, emb, mask).sample
    assert torch.allclose(plain, recorded, atol=1e-5)
    maps = rec.maps()  # (1 row kept, null + 5 tokens, 16, 16)
    assert maps.shape == (1, 1 + 5, 16, 16)
    assert rec.count == sum(1 for m in unet.modules() if isinstance(m, TextAttention))
    total = maps.sum(dim=1)
    assert (total <= 1 + 1e-5).all() and (total > 0).all()  # a share of each position's attention
    assert maps[0, 4:].abs().max() < 1e-6  # padding gets nothing


def test_word_maps_join_subtokens_and_drop_special_tokens():
    tokenizer = train_caption_tokenizer(TINY_CAPTIONS, max_length=16)
    prompt = "woman firefighter: dark skin tone"
    n_tokens = len(tokenizer(prompt)["input_ids"])  # words, ':' and </s>
    token_maps = torch.arange(1 + n_tokens, dtype=torch.float32)[:, None, None].expand(-1, 4, 4)  # map k = k
    words = word_maps(tokenizer, prompt, token_maps, num_null_tokens=1, max_length=16)
    assert list(words) == ["woman", "firefighter:", "dark", "skin", "tone"]
    assert words["woman"][0, 0] == 1  # the first text token, after the null token
    assert words["firefighter:"][0, 0] == 2 + 3  # "firefighter" and ":" together
    assert words["tone"][0, 0] == 6  # and </s> (token 7) is not a word
    from PIL import Image

    assert overlay(Image.new("RGB", (8, 8)), words["dark"]).size == (8, 8)


def test_pipeline_returns_word_maps_per_stage_and_streams_them():
    import numpy as np

    from imagen_app.training.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.cpu_bf16 = False  # float32: recording computes the attention its own way, which bf16 would round otherwise
    prompt = "woman firefighter: dark skin tone"
    plain = pipe(prompt, generator=torch.Generator().manual_seed(0))
    assert plain.attention_maps is None
    out = pipe(prompt, generator=torch.Generator().manual_seed(0), return_attention=True)
    assert len(out.attention_maps) == 3
    for maps, size in zip(out.attention_maps, pipe.stage_resolutions):
        assert list(maps) == ["woman", "firefighter:", "dark", "skin", "tone"]
        assert all(m.shape == (size, size) and np.isfinite(m).all() and (m >= 0).all() for m in maps.values())
    for a, b in zip(plain.stage_images, out.stage_images):  # recording leaves the images as they were (rounding)
        assert np.abs(np.asarray(a[0], dtype=int) - np.asarray(b[0], dtype=int)).max() <= 1
    events = [ev for ev in pipe.stream(prompt, generator=torch.Generator().manual_seed(0), return_attention=True)
              if not ev.is_final]
    assert all(ev.attention_maps and set(ev.attention_maps) == set(out.attention_maps[ev.stage - 1]) for ev in events)
    last_of_stage_1 = [ev for ev in events if ev.stage == 1][-1]
    assert np.allclose(last_of_stage_1.attention_maps["tone"], out.attention_maps[0]["tone"])
    assert all(not layer.recorders for unet in pipe.unets for layer in unet.modules() if isinstance(layer, TextAttention))


def test_app_shows_where_each_word_went(client):
    result = generate_named(client.predict("red heart", api_name="/generate"))
    captions = [item["caption"] for item in result["word_maps"]]
    assert "stage 1 · red" in captions and "stage 1 · heart" in captions
    assert {c.split(" · ")[0] for c in captions} == {"stage 1", "stage 2", "stage 3"}


def test_a_generation_in_another_thread_is_not_recorded():
    """The app may run a second generation (another worker, or a cancelled run finishing its step) on the same U-Net."""
    import threading

    torch.manual_seed(0)
    unet = tiny_unet(16, lowres=False, text_dim=16).eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    rec = CrossAttentionRecorder(unet, size=16)
    with rec:
        other = threading.Thread(target=lambda: unet(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.randn(2, 9, 16)))
        other.start()
        other.join()
        assert rec.count == 0  # the other thread's call (another batch and prompt length) was not recorded
        unet(x, t, torch.randn(1, 5, 16))
    assert rec.maps().shape == (1, 1 + 5, 16, 16)


def test_the_thread_that_runs_the_step_is_recorded_not_the_one_that_made_the_recorder():
    """Gradio advances a streamed generation from whichever worker thread is free, so a recorder made on one
    thread records its steps on another, while a second run may be using the first thread (a cancelled run
    finishing its step, then the next job): its calls, with another batch, must not reach this recorder."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    unet = tiny_unet(16, lowres=False, text_dim=16).eval()
    with ThreadPoolExecutor(1) as maker_thread:
        rec = maker_thread.submit(CrossAttentionRecorder, unet, 16).result()
        with rec:  # this run's step, on this thread
            unet(torch.randn(1, 3, 16, 16), torch.tensor([500]), torch.randn(1, 5, 16))
            # another run's step on the recorder's maker thread, with another batch and prompt length
            maker_thread.submit(unet, torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.randn(2, 9, 16)).result()
            unet(torch.randn(1, 3, 16, 16), torch.tensor([400]), torch.randn(1, 5, 16))
    assert rec.count > 0 and rec.maps().shape == (1, 1 + 5, 16, 16)
    assert all(not layer.recorders for layer in rec.layers)  # nothing left registered
