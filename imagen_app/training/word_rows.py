"""Some words' rows of a taught text encoder put back as another encoder has them.

`tune-text` teaches word rows jointly, and a longer run can improve most words while one gets worse on what the
model draws ("draw a X": session 19 and 20). A row is used only in prompts holding its word, so taking that one
word's row (and its further rows, "sad_alone_2", ...) from the earlier encoder gives, for every prompt with that word
and otherwise only rows of the later run or of captions, exactly the earlier encoder's output: a choice per word
between two runs, each measured, rather than a run made again without the word.
"""
from __future__ import annotations

import itertools
import os
import shutil
from typing import List, Sequence

import torch

from .text_extension import row_word


def word_and_further_rows(word: str, vocab) -> List[str]:
    """`word` and its further rows in `vocab` ("sad_alone" -> sad_alone, sad_alone_2, ...)."""
    return [word] + list(itertools.takewhile(vocab.__contains__, (row_word(word, k) for k in itertools.count(2))))


def keep_rows(taught: str, reference: str, words: Sequence[str], out: str) -> List[str]:
    """Writes to `out` (tokenizer/ and text_encoder/) the encoder of folder `taught` with the rows of `words` as the
    encoder of folder `reference` has them. Both read the words alike (the same ids and further rows) and have the
    same layers; returns the tokens whose rows were put back."""
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizers = [AutoTokenizer.from_pretrained(os.path.join(f, "tokenizer")) for f in (taught, reference)]
    encoders = [T5EncoderModel.from_pretrained(os.path.join(f, "text_encoder")) for f in (taught, reference)]
    vocabs = [t.get_vocab() for t in tokenizers]
    tokens = []
    for word in words:
        if word not in vocabs[0]:
            raise ValueError(f"{word!r} is no word of {taught}'s tokenizer")
        rows = word_and_further_rows(word, vocabs[0])
        if [vocabs[1].get(r) for r in rows] != [vocabs[0][r] for r in rows] or row_word(word, len(rows) + 1) in vocabs[1]:
            raise ValueError(f"{word!r} reads differently in {taught} and {reference}")
        tokens += rows
    layers = [{k: v for k, v in e.state_dict().items() if "shared" not in k and "embed_tokens" not in k} for e in encoders]
    if layers[0].keys() != layers[1].keys() or any(not torch.equal(layers[0][k], layers[1][k]) for k in layers[0]):
        raise ValueError(f"{taught} and {reference} differ beyond their word rows: a row of one means something else "
                         "in the other")
    ids = [vocabs[0][t] for t in tokens]
    with torch.no_grad():
        encoders[0].get_input_embeddings().weight[ids] = encoders[1].get_input_embeddings().weight[ids]
    shutil.copytree(os.path.join(taught, "tokenizer"), os.path.join(out, "tokenizer"), dirs_exist_ok=True)  # as it was
    encoders[0].save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)
    return tokens
