"""A small T5 for the shipped model: a word-level tokenizer trained on the captions, then a T5
pre-trained on caption text alone with T5's span-corruption objective; its encoder is then
frozen, as Imagen does with T5-XXL (§2.1: text-only pre-training, frozen during diffusion training).

A word-level vocabulary makes "the model doesn't know this word" exact: every word outside the
captions maps to <unk>, which the UI reports.
"""
from __future__ import annotations

import math
import random
import time
from typing import Iterable, List, Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

NUM_SENTINELS = 16


def train_caption_tokenizer(texts: Iterable[str], max_length: int = 32, min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over the words of `texts`, with T5's special tokens."""
    specials = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(NUM_SENTINELS)]
    norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    counts: dict = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    words = sorted(w for w, c in counts.items() if c >= min_frequency)
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=specials[3:], model_max_length=max_length,
    )


def span_corrupt(ids: List[int], sentinel_ids: Sequence[int], eos_id: int, rng: random.Random,
                 noise_density: float = 0.15, mean_span: float = 3.0):
    """T5 span corruption (Raffel et al. 2020, §3.1.4): replace random spans of the input by
    sentinels; the target lists each sentinel followed by the span it replaced."""
    n = len(ids)
    n_noise = max(1, min(n - 1, round(n * noise_density))) if n > 1 else 0
    if n_noise == 0:
        return list(ids) + [eos_id], [sentinel_ids[0], *ids, eos_id]
    n_spans = max(1, min(len(sentinel_ids), round(n_noise / mean_span)))
    noise = [False] * n
    starts = sorted(rng.sample(range(n), n_spans))
    budget = n_noise
    for k, s in enumerate(starts):
        length = max(1, budget // (n_spans - k))
        for j in range(s, min(n, s + length)):
            if not noise[j]:
                noise[j] = True
                budget -= 1
    inputs, targets, sentinel = [], [], 0
    for j, tid in enumerate(ids):
        if noise[j]:
            if j == 0 or not noise[j - 1]:
                inputs.append(sentinel_ids[sentinel])
                targets.append(sentinel_ids[sentinel])
                sentinel += 1
            targets.append(tid)
        else:
            inputs.append(tid)
    return inputs + [eos_id], targets + [eos_id]


def small_t5_config(vocab_size: int, d_model: int = 256, layers: int = 4, heads: int = 4) -> T5Config:
    return T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=4 * d_model,
                    num_layers=layers, num_decoder_layers=2, num_heads=heads, feed_forward_proj="gated-gelu",
                    dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                    tie_word_embeddings=False)


def pretrain_t5(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], steps: int, batch_size: int = 128,
                lr: float = 2e-3, d_model: int = 256, layers: int = 4, seed: int = 0, log_every: int = 100):
    """Span-corruption pre-training on `texts`; returns the T5ForConditionalGeneration."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = T5ForConditionalGeneration(small_t5_config(len(tokenizer), d_model, layers))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    sentinels = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(NUM_SENTINELS)])
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    encoded = [e[: tokenizer.model_max_length - 1] for e in encoded if e]
    t0 = time.time()
    model.train()
    for step in range(steps):
        pairs = [span_corrupt(rng.choice(encoded), sentinels, tokenizer.eos_token_id, rng) for _ in range(batch_size)]
        inp = _pad([p[0] for p in pairs], 0)
        tgt = _pad([p[1] for p in pairs], -100)
        loss = model(input_ids=inp, attention_mask=(inp != 0), labels=tgt).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"t5 step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()


def _pad(seqs: List[List[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])


def export_encoder(model: T5ForConditionalGeneration):
    """The encoder half of a trained T5, as a T5EncoderModel (every weight copied, strictly)."""
    from transformers import T5EncoderModel

    encoder = T5EncoderModel(model.config)
    encoder.shared.load_state_dict(model.shared.state_dict())
    encoder.encoder.load_state_dict(model.get_encoder().state_dict(), strict=True)
    return encoder.eval()


def train_text_encoder(out_dir: str, steps: int = 2000, d_model: int = 128, layers: int = 3, seed: int = 0) -> None:
    """Builds the shipped text encoder from the emoji captions of the training split: writes
    `out_dir/tokenizer` and `out_dir/text_encoder` (the frozen T5 encoder, safetensors)."""
    import os

    from .data import emoji_dataset

    texts = sorted({c for caps in emoji_dataset(32, "train").captions for c in caps})
    tokenizer = train_caption_tokenizer(texts)
    model = pretrain_t5(tokenizer, texts, steps=steps, batch_size=64, d_model=d_model, layers=layers, seed=seed)
    encoder = export_encoder(model)
    tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
    encoder.save_pretrained(os.path.join(out_dir, "text_encoder"), safe_serialization=True)
