import torch

from imagen_app.models.text_encoder import PromptEncoder


def test_embeddings_and_mask(tiny_pipe):
    enc = tiny_pipe.prompt_encoder
    emb, mask = enc.encode(["red heart", "", "woman firefighter: dark skin tone"])
    assert emb.shape[:2] == mask.shape and mask.dtype == torch.bool
    assert mask[0].sum() == 3  # red, heart, </s>
    assert mask[1].sum() == 0  # the empty prompt: the null condition
    assert torch.all(emb[~mask] == 0)  # padded positions are zero
    assert torch.any(emb[0, :3] != 0)


def test_cache_hit_returns_same_tensor(tiny_pipe):
    enc = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, cache_size=2)
    first = enc._encode_one("red heart")
    assert enc._encode_one("red heart") is first
    enc._encode_one("panda"), enc._encode_one("blue heart")
    assert "red heart" not in enc._cache  # LRU eviction past cache_size


def test_report_unknown_and_truncated(tiny_pipe):
    enc = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, max_length=6)
    rep = enc.report("red corgi heart woman firefighter dark skin tone")
    assert rep.unknown_words == ["corgi"]
    assert rep.truncated_words == ["dark", "skin", "tone"]
    assert rep.tokens[:3] == ["red", "<unk>", "heart"]
    assert any("corgi" in w for w in rep.warnings())
    assert enc.report("").is_unconditional
    assert enc.report("red heart").warnings() == []


def test_encoder_is_frozen(tiny_pipe):
    assert not any(p.requires_grad for p in tiny_pipe.text_encoder.parameters())


def test_warm_batches_match_one_by_one_encoding(tiny_pipe):
    prompts = ["red heart", "woman firefighter: dark skin tone", "panda", "  red   heart ", ""]
    one_by_one = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, cache_size=100)
    batched = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, cache_size=100)
    batched.warm(prompts, batch_size=2)  # padded batches: the short prompts share a batch with a long one
    assert set(batched._cache) == {"red heart", "woman firefighter: dark skin tone", "panda"}  # normalised, no empty
    for p in prompts[:3]:
        assert torch.allclose(batched._cache[p], one_by_one._encode_one(p), atol=1e-5)
    small = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, cache_size=2)
    small.warm(prompts)
    assert len(small._cache) == 2  # never past cache_size
