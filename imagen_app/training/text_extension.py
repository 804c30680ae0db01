"""New words for the frozen text encoder, without changing what it says about the old ones.

The shipped tokenizer is word-level over the emoji captions: "above", "below", "to" and plurals ("foxes",
"mice") are not in it. Sentences need them. Re-training the tokenizer and T5 would change every caption's
embedding, and with it everything the U-Nets learned. Instead the vocabulary is extended: new words get new ids
after the old ones and new rows in T5's embedding table; every old id and weight stays as it is, so every
caption made of old words encodes to exactly the same embeddings (a test checks it).

A new word's row starts as a copy of a word it stands for ("foxes" <- "fox", "3" <- "three": the number is
carried by the count word of the sentence, and the U-Net learns what a plural looks like from the images), or
else as a random draw at the scale of the table ("above", "below", "to"), which the frozen encoder maps to its
own contextual embeddings that the U-Net learns from the images. Imagen keeps its text encoder frozen (§2.1);
so does this.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F


class GrowingEmbedding(torch.nn.Module):
    """T5's embedding table as the old rows and the new words' rows, each with a learning rate of its own: a new word
    seen a few dozen times must move its row by a good part of the table's scale, where Adam at the layers' learning
    rate would move it by a hundredth; an old word's row moves slowly, or not at all (`old_word_lr` 0)."""

    def __init__(self, old: torch.Tensor, new: torch.Tensor):
        super().__init__()
        self.old = torch.nn.Parameter(old.clone(), requires_grad=False)  # tune_text lets it learn at old_word_lr
        self.new = torch.nn.Parameter(new.clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.old, self.new])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    def merged(self) -> torch.nn.Embedding:
        table = torch.nn.Embedding(self.old.shape[0] + self.new.shape[0], self.old.shape[1])
        table.weight.data.copy_(self.weight.detach())
        return table


def new_words(tokenizer, texts: Iterable[str]) -> List[str]:
    """The words of `texts` (as the tokenizer splits them) that its vocabulary lacks, sorted."""
    backend = tokenizer.backend_tokenizer
    vocab = tokenizer.get_vocab()
    found = set()
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            if word not in vocab:
                found.add(word)
    return sorted(found)


def phrase_token(phrase: str) -> str:
    """The one word a multi-word phrase is read as: "picture of" -> "picture_of"."""
    return "_".join(phrase.split())


FLAG_SUFFIX = "_flag"


def flag_word(adjective: str) -> str:
    """The word a country adjective is read as in a flag's name: "flag: japanese" -> "flag", ":", "japanese_flag"."""
    return f"{adjective}{FLAG_SUFFIX}"


ALONE_SUFFIX = "_alone"
_ALONE_MARK = "\ue000"  # (a private-use character: no typed prompt holds it)


def alone_word(word: str) -> str:
    """The word a caption's word is read as where it stands alone for an emoji: "a cowboy" -> "cowboy_alone", where
    "cowboy hat face" keeps "cowboy"."""
    return f"{word}{ALONE_SUFFIX}"


def row_word(word: str, k: int) -> str:
    """The k-th (k >= 2) of the words a word of several rows is read as: "music" -> "music", "music_2"."""
    return f"{word}_{k}"


def extended_tokenizer(tokenizer, words: List[str], phrases: Iterable[str] = (), flag_adjectives: Iterable[str] = (),
                       rows: Optional[Dict[str, int]] = None, alone: Iterable[str] = (),
                       alone_context: Tuple[str, str] = ("^", r"[\s.!?]*$"), alone_heads: Optional[Dict[str, str]] = None,
                       alone_partners: Optional[Dict[str, List[str]]] = None, first_phrases: Iterable[str] = ()):
    """A copy of the word-level `tokenizer` with `words` appended (old ids unchanged), and each of `phrases` read as
    one word of its own ("a picture of a cat" -> "a", "picture_of", "a", "cat"): a phrase no caption holds gets a
    row that can learn what it means as a whole, where its words ("picture" of "framed picture", "of") are caption
    words whose rows must stay. Each of `flag_adjectives` after "flag: " (where "the Japanese flag" is brought to)
    is a word of its own, `flag_word`: "japanese" of "japanese castle" keeps its row, and the flag's learns.
    A new word w in `rows` with n > 1 is read as n words, w and `row_word(w, k)`: the rows of a word that stands
    for a name of several words ("music" for "musical note"; one row cannot say what the U-Net read in two).
    Each word of `alone` is read as `alone_word(w)` where it stands alone in a typed form ("a cowboy", "cowboy
    emoji"), not inside a caption ("cowboy hat face"): `alone_context` is the regexes of what may come before it
    (alternatives of fixed lengths) and after it (by default: nothing but a closing ".", "!" or "?"; not "keycap
    #"). A word of `rows` may be an alone word ("cowboy_alone", "cowboy_alone_2", ...). A word of `alone_heads`
    also stands alone before its head, the last word of the name it starts as ("a sad face": `sad_alone` = "sad but
    relieved face", then "face"), where "sad face" alone had read as the caption words "sad", "face". Each of
    `first_phrases` is read as one word as `phrases` are, but before the rules an earlier extension added (right after
    the lower-casing): "can of" before "can" is read as its rows, "cup of" before "cup" is marked alone."""
    from tokenizers import Regex, Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: Dict[str, int] = dict(state["model"]["vocab"])
    phrases = [p for p in phrases if " " in p.strip() and phrase_token(p) not in vocab]  # (a taught one has its rule)
    first_phrases = [p for p in first_phrases if " " in p.strip() and phrase_token(p) not in vocab and p not in phrases]
    earlier = _old_normalizers(state)
    if not earlier:  # a tokenizer no extension has touched: they lead the new rules
        phrases, first_phrases = first_phrases + phrases, []
    flag_adjectives = [a for a in flag_adjectives if flag_word(a) not in vocab]
    alone = [w for w in alone if alone_word(w) not in vocab]
    several = {w: n for w, n in (rows or {}).items() if n > 1 and row_word(w, 2) not in vocab}
    for w in list(words) + [phrase_token(p) for p in first_phrases + phrases] + [flag_word(a) for a in flag_adjectives] + [
            alone_word(w) for w in alone] + [
            row_word(w, k) for w, n in several.items() for k in range(2, n + 1)]:
        if w not in vocab:
            vocab[w] = len(vocab)
    had = _partner_starts(state)
    pair_rules = [_partner_rule(w, ps) for w, ps in sorted((alone_partners or {}).items())
                  if ps and alone_word(w) in vocab and _partner_start(w) not in had]
    old_replacements = _alone_replacements(state)
    if pair_rules and old_replacements is not None:  # before the old words' marks are read: with them
        earlier[old_replacements:old_replacements] = pair_rules
        pair_rules = []
    if first_phrases:  # after the leading unicode and case normalizers, ahead of every word rule
        at = next((i for i, r in enumerate(earlier) if r.get("type") == "Replace"), len(earlier))
        earlier[at:at] = [{"type": "Replace", "pattern": {"Regex": _phrase_pattern(p)}, "content": phrase_token(p)}
                          for p in first_phrases]
    backend = Tokenizer.from_str(json.dumps(state))
    backend.model = models.WordLevel(vocab=vocab, unk_token=state["model"].get("unk_token", "<unk>"))
    # after the lower-casing: "Picture  of" reads as "picture_of" too
    rules = [normalizers.Replace(Regex(_phrase_pattern(p)), phrase_token(p)) for p in phrases]
    # the adjective that ends a flag's name ("flag: american", not "flag: american samoa")
    rules += [normalizers.Replace(Regex(r"(?<=\bflag: )" + re.escape(a) + r"(?=\W*$)"), flag_word(a))
              for a in flag_adjectives]
    if alone:  # a mark where a word of them stands alone (one pass), then each marked word its own
        longest_first = sorted(alone, key=len, reverse=True)  # ("cowboys" before "cowboy")
        before, after = alone_context
        heads = alone_heads or {}
        words_alone = "|".join(re.escape(w) + (f"(?: {re.escape(heads[w])})?" if w in heads else "") for w in longest_first)
        rules.append(normalizers.Replace(Regex(f"(?<={before})(?=(?:{words_alone}){after})"), _ALONE_MARK))
    rules += [normalizers.Replace(Regex(r["pattern"]["Regex"]), _ALONE_MARK) for r in pair_rules]
    if alone:
        rules += [normalizers.Replace(_ALONE_MARK + w, alone_word(w)) for w in longest_first]
    rules += [normalizers.Replace(Regex(r"\b" + re.escape(w) + r"\b"), " ".join([w] + [row_word(w, k) for k in range(2, n + 1)]))
              for w, n in several.items()]
    if rules:
        backend.normalizer = normalizers.Sequence(([backend.normalizer] if backend.normalizer else []) + rules)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=tokenizer.pad_token, eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token, additional_special_tokens=[t for t in tokenizer.all_special_tokens if t.startswith("<extra_id_")],
        model_max_length=tokenizer.model_max_length)


def _phrase_pattern(phrase: str) -> str:
    """The regex of a phrase's words, any spacing between them ("picture  of")."""
    return r"\b" + r"\s+".join(map(re.escape, phrase.split())) + r"\b"


_PARTNER_BEHIND = "(?<![" + _ALONE_MARK + r"\w])"  # not inside a word, nor marked already
_OPTIONAL_OF = "(?:of )?"


def _partner_start(word: str) -> str:
    """The start of `word`'s partner rule, up to its optional "of": what says a tokenizer has the rule."""
    return f"{_PARTNER_BEHIND}(?={re.escape(word)} "


def _partner_rule(word: str, partners: List[str]) -> Dict:
    """The rule (as the tokenizer's JSON holds it) that marks `word` where it stands before one of `partners`."""
    alternatives = "|".join(re.escape(p) for p in sorted(set(partners), key=lambda p: (-len(p), p)))
    return {"type": "Replace", "pattern": {"Regex": f"{_partner_start(word)}{_OPTIONAL_OF}(?:{alternatives})\\b)"},
            "content": _ALONE_MARK}


def _old_normalizers(state: Dict) -> List[Dict]:
    n = state.get("normalizer") or {}
    return n.get("normalizers", []) if n.get("type") == "Sequence" else []


def _partner_starts(state: Dict) -> set:
    """The starts of the partner rules a tokenizer has ("...(?=sad "): a word's is added once."""
    return {r["pattern"]["Regex"].split(_OPTIONAL_OF)[0] for r in _old_normalizers(state)
            if r.get("type") == "Replace" and r.get("pattern", {}).get("Regex", "").startswith(_PARTNER_BEHIND)}


def _alone_replacements(state: Dict) -> Optional[int]:
    """Where a tokenizer's normalizer starts reading its marks as alone words (None: it has none)."""
    for i, r in enumerate(_old_normalizers(state)):
        if r.get("type") == "Replace" and r.get("pattern", {}).get("String", "").startswith(_ALONE_MARK):
            return i
    return None


@torch.no_grad()
def extend_text_encoder(src: str, out: str, texts: Iterable[str], stands_for: Optional[Dict[str, str]] = None,
                        seed: int = 0) -> List[str]:
    """Writes `out/tokenizer` and `out/text_encoder`: the ones in `src` with the words of `texts` that they lack.
    `stands_for` maps a new word to an old one whose embedding row it starts from. Returns the new words."""
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(src, "tokenizer"))
    encoder = T5EncoderModel.from_pretrained(os.path.join(src, "text_encoder"))
    words = new_words(tokenizer, texts)
    bigger = extended_tokenizer(tokenizer, words)
    old = encoder.get_input_embeddings().weight.detach().clone()  # (V, D)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    vocab = tokenizer.get_vocab()
    for w in words:
        like = (stands_for or {}).get(w)
        if like is not None and like in vocab:
            rows.append(old[vocab[like]])
        else:  # a fresh direction at the table's own scale
            rows.append(torch.randn(old.shape[1], generator=generator) * old.std())
    table = GrowingEmbedding(old, torch.stack(rows) if rows else old[:0]).merged()
    encoder.set_input_embeddings(table)
    encoder.config.vocab_size = table.num_embeddings
    os.makedirs(out, exist_ok=True)
    bigger.save_pretrained(os.path.join(out, "tokenizer"))
    encoder.save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)
    return words
