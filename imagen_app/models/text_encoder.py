"""The frozen T5 text encoder: prompts -> per-token embeddings + padding mask (Imagen §2.1).

Imagen conditions on the per-token embeddings of a frozen, text-only pre-trained T5 encoder.
Embeddings are cached per prompt, since the same prompt is encoded again and again in a
playground. The empty prompt is the null (unconditional) condition: no tokens at all, which
the U-Net turns into its learned null embedding.
"""
from __future__ import annotations

import os
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Sequence

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5EncoderModel

from ..hub import hub_offline


@dataclass
class PromptReport:
    """What the model will see of a prompt."""

    prompt: str
    tokens: List[str] = field(default_factory=list)
    unknown_words: List[str] = field(default_factory=list)  # words that map to the unknown token
    truncated_words: List[str] = field(default_factory=list)  # words cut by the length limit

    @property
    def is_unconditional(self) -> bool:
        return not self.prompt.strip()

    def warnings(self) -> List[str]:
        out = []
        if self.unknown_words:
            out.append("The model doesn't know: " + ", ".join(repr(w) for w in self.unknown_words))
        if self.truncated_words:
            out.append("Cut by the length limit: " + " ".join(self.truncated_words))
        return out


def load_text_encoder(path_or_id: str, local_files_only: bool | None = None):
    """Loads (tokenizer, frozen T5EncoderModel) from a folder, or from a hub id where a hub is reachable.

    A folder may hold the tokenizer and model side by side, or in `tokenizer/` and `text_encoder/`.
    """
    if local_files_only is None:
        local_files_only = os.path.isdir(path_or_id) or hub_offline()
    tok_path = enc_path = path_or_id
    if os.path.isdir(os.path.join(path_or_id, "text_encoder")):
        tok_path, enc_path = os.path.join(path_or_id, "tokenizer"), os.path.join(path_or_id, "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(tok_path, local_files_only=local_files_only)
    encoder = T5EncoderModel.from_pretrained(enc_path, local_files_only=local_files_only)
    return tokenizer, freeze(encoder)


def freeze(encoder: torch.nn.Module) -> torch.nn.Module:
    encoder.requires_grad_(False)
    return encoder.eval()


_TONE_RE = re.compile(r"\b(medium[- ]light|medium[- ]dark|light|medium|dark) skin tone\b")
# The start of a sentence, not of a country's name, before a closing "flag" ("a cat and the japanese flag").
_SENTENCE_START = re.compile(r"(?:a|an|some|my|this|one|two|three|four|picture|drawing|image|photo) ")
# Names that end or start with "flag" but are not a country's flag ("white flag", "flag in hole").
_NOT_COUNTRY_FLAGS = {"crossed", "chequered", "checkered", "rainbow", "transgender", "white", "black", "pirate",
                      "triangular", "waving white", "waving black", "in hole"}


def check_text(text: str, name: str = "prompt") -> str:
    """`text` if it is valid Unicode text; else (a lone surrogate such as "\\ud800", which a raw JSON request or a
    Python caller can send) a ValueError that names it: such text cannot be encoded, saved or sent back."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"The {name} contains a character that is not valid Unicode text (a lone surrogate, "
                         f"{text[e.start]!r} at position {e.start}): remove it or type the text again.") from None
    return text


def normalize_prompt(prompt: str) -> str:
    """The one prompt normalisation, used for training captions and user prompts alike (PromptEncoder
    applies it): NFKC, lower case, single spaces, and the forms people type brought to the CLDR form the
    captions use: "woman firefighter dark skin tone" -> "woman firefighter: dark skin tone", "flag of
    japan" / "japan flag" / "flag japan" -> "flag: japan". A CLDR caption maps to itself."""
    text = " ".join(unicodedata.normalize("NFKC", prompt).lower().split())
    return _canonical_flag(_canonical_skin_tones(text))


def _canonical_skin_tones(text: str) -> str:
    tones = list(_TONE_RE.finditer(text))
    prefix = text[: tones[0].start()].rstrip(" :,") if tones else ""
    if not prefix:  # no tone, or a tone on its own (the skin-tone swatch emoji): nothing to bring together
        return text
    names = ", ".join(m.group(1).replace(" ", "-") + " skin tone" for m in tones)
    return f"{prefix}: {names}{text[tones[-1].end():]}"


def canonical_prompt(prompt: str, vocabulary=None) -> str:
    """normalize_prompt, then the known name of a CaptionVocabulary (caption_vocabulary.py), where there is one:
    the text the encoder is given, in training and on the page alike."""
    return vocabulary.canonical(prompt) if vocabulary is not None else normalize_prompt(prompt)


def _canonical_flag(text: str) -> str:
    """"the flag of japan", "japan flag", "flag japan" -> "flag: japan"; a closing "!", "?" or "." stays ("Japan flag!"
    -> "flag: japan!")."""
    text, mark = re.fullmatch(r"(.*?)\s*([.!?]*)", text).groups()
    m = (re.fullmatch(r"(?:the )?flag (?:of|for) (?:the )?(.+)", text) or re.fullmatch(r"flag:? (.+)", text)
         or re.fullmatch(r"(?:the )?(.+?) flag", text))
    if not m or "mailbox" in text or any(
            m.group(1) == n or m.group(1).startswith(n + " ") or m.group(1).endswith(" " + n) for n in _NOT_COUNTRY_FLAGS):
        return text + mark
    # a sentence that ends in a flag is no flag's name ("a cat and the japanese flag", "a picture of music, ...")
    if "," in m.group(1) or len(m.group(1).split()) > 6 or _SENTENCE_START.match(m.group(1)):
        return text + mark
    return "flag: " + m.group(1) + mark


class PromptEncoder:
    """Encodes prompts with a frozen tokenizer + T5 encoder, with an LRU cache of embeddings."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text_encoder: T5EncoderModel, max_length: int | None = None,
                 cache_size: int = 64, vocabulary=None):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vocabulary = vocabulary  # a caption_vocabulary.CaptionVocabulary: typed names -> the names trained on
        model_max = getattr(tokenizer, "model_max_length", 512)
        self.max_length = int(max_length or (model_max if model_max and model_max < 10_000 else 128))
        self.cache_size = cache_size
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    @property
    def embed_dim(self) -> int:
        return self.text_encoder.config.d_model

    def canonical(self, prompt: str) -> str:
        """The text the encoder is given for `prompt`: normalize_prompt, then the vocabulary's known name, if any.
        A prompt that is not valid Unicode text (check_text) is a ValueError."""
        check_text(prompt)
        return canonical_prompt(prompt, self.vocabulary)

    def _tokenize(self, prompt: str, truncation: bool):
        return self.tokenizer(prompt, truncation=truncation, max_length=self.max_length if truncation else None,
                              add_special_tokens=True, return_offsets_mapping=True)

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> torch.Tensor:
        """prompt -> (L, D) embeddings of its tokens; (0, D) for the empty prompt."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        emb = self._encode_batch([prompt])[0] if prompt else torch.zeros(0, self.embed_dim)
        self._cache[prompt] = emb
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    @torch.no_grad()
    def warm(self, prompts: Sequence[str], batch_size: int = 256) -> None:
        """Fills the cache for `prompts` in padded batches: one encoder call per batch instead of one per prompt
        (what a training run's first steps would otherwise spend on its new captions). T5's attention mask keeps
        each prompt's embeddings independent of the padding."""
        todo = list(dict.fromkeys(p for p in map(self.canonical, prompts) if p and p not in self._cache))
        todo = todo[: max(0, self.cache_size - len(self._cache))]
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            self._cache.update(zip(chunk, self._encode_batch(chunk)))

    @torch.no_grad()
    def _encode_batch(self, prompts: Sequence[str]) -> List[torch.Tensor]:
        """Non-empty prompts -> one (L_i, D) CPU tensor each, the padding cut off."""
        tok = self.tokenizer(list(prompts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        tok = {k: v.to(self.text_encoder.device) for k, v in tok.items()}
        hidden = self.text_encoder(**tok).last_hidden_state.float().cpu()
        return [h[: int(m.sum())].clone() for h, m in zip(hidden, tok["attention_mask"].cpu())]

    def encode(self, prompts: Sequence[str], device=None, dtype=torch.float32):
        """prompts -> embeds (B, L, D), zero at padding, and mask (B, L) bool (True = a real token)."""
        embs = [self._encode_one(self.canonical(p)) for p in prompts]
        length = max(1, max(e.shape[0] for e in embs))
        embeds = torch.zeros(len(embs), length, self.embed_dim)
        mask = torch.zeros(len(embs), length, dtype=torch.bool)
        for i, e in enumerate(embs):
            embeds[i, : e.shape[0]] = e
            mask[i, : e.shape[0]] = True
        return embeds.to(device=device, dtype=dtype), mask.to(device)

    def report(self, prompt: str) -> PromptReport:
        """Tokens of the prompt, the words the tokenizer does not know and the words truncation cuts."""
        prompt = self.canonical(prompt)
        rep = PromptReport(prompt=prompt)
        if not prompt:
            return rep
        kept = self._tokenize(prompt, truncation=True)
        full = self._tokenize(prompt, truncation=False)
        rep.tokens = self.tokenizer.convert_ids_to_tokens(kept["input_ids"])
        # Tokens that stand for text (special tokens have empty character spans), in order.
        content = [(tid, s, e) for tid, (s, e) in zip(full["input_ids"], full["offset_mapping"]) if e > s]
        n_kept = sum(1 for s, e in kept["offset_mapping"] if e > s)
        unk_id = self.tokenizer.unk_token_id
        for m in re.finditer(r"\S+", prompt):
            word_tokens = [(k, tid) for k, (tid, s, e) in enumerate(content) if s < m.end() and e > m.start()]
            word = m.group().strip(".,;:!?\"'()")
            if unk_id is not None and any(tid == unk_id for _, tid in word_tokens) and word not in rep.unknown_words:
                rep.unknown_words.append(word)  # each unknown word once, however often it is typed
            if word_tokens and all(k >= n_kept for k, _ in word_tokens):
                rep.truncated_words.append(m.group())
        return rep
