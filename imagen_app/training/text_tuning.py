"""Teaching the text encoder the forms people type (`python -m imagen_app tune-text`).

The base U-Net draws every emoji from its CLDR name. A typed form ("a kitten", "the Japanese flag", "coffee
emoji") should reach it as a condition that draws the same picture. The text encoder learns that by
distillation through the frozen base U-Net: for a typed form of emoji E, a render of E is noised at a random
timestep, and the U-Net's prediction with the *typed* form's embeddings (from the encoder being trained) is
pulled to its prediction with E's *name* under the original encoder (the teacher, fixed):

    loss = | unet(x_t, t, encoder(typed)) - unet(x_t, t, encoder_0(name)) |^2  +  w * | encoder(name) - encoder_0(name) |^2

This is the diffusion loss with a lower-variance target (the teacher's prediction in place of the sampled noise),
so a keyword naming many emoji learns the distribution over them, as it would from the images. The second term
(the anchor) keeps what every name the U-Nets were trained on encodes to: the families and examples stay. New
words (keywords, synonyms, plurals, "?") get new rows in the embedding table (`text_extension.extended_tokenizer`),
each starting from the mean row of the words of an emoji it stands for. Imagen keeps T5 frozen while the U-Nets
train (section 2.1); here it is the U-Nets that stay frozen while the encoder learns new ways to say what they draw.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..images import pixels_to_tensor
from .phrasing import (DETERMINERS, FLAG_FORMS, FORM_WORDS, FRAME_PHRASES, FRAMES, PLURAL_DETERMINERS,
                       PORTION_NOUNS, PORTION_PHRASES, PUNCTUATION, VERB_PHRASES, PhrasingSampler, alone_context,
                       portion_frames, shares_start)
from .text_extension import FLAG_SUFFIX, GrowingEmbedding, alone_word, flag_word, phrase_token, row_word
from .word_rows import word_and_further_rows

CHECKPOINT = "text_tuning.pt"


@dataclass
class TextTuningConfig:
    weights: str = "weights"  # the pipeline folder whose text encoder is taught (and whose base U-Net teaches)
    keywords: Optional[str] = None  # the keyword table (default: weights/keywords.txt)
    run_dir: str = "runs/text_tuning"  # checkpoint (resumable) and log
    out: str = "runs/text_tuning/export"  # tokenizer/ and text_encoder/ written here
    steps: int = 1500
    batch_size: int = 256
    anchor_batch: int = 96
    anchor_weight: float = 4.0
    # "embeddings": a caption's encoder output stays where it was; "layers" (with the layers objective): what it
    # makes the base U-Net's text path add, on traced pixels of other emoji, stays (what the U-Net reads of it)
    anchor_objective: str = "embeddings"
    lr: float = 3e-4  # the encoder's layers
    new_word_lr: float = 3e-3  # the new words' embedding rows (Adam moves a row ~lr per element each time it is drawn)
    old_word_lr: float = 1e-3  # the old words' rows ("japanese" of "japanese castle" learns "the japanese flag" too;
    # the anchor keeps every name's embeddings); 0: fixed
    # Only the rows of words that no caption holds learn (the new words, and the old vocabulary's words that only an
    # alias had, such as "emoji" and "icon"): every caption encodes bit for bit as before (the families, the examples
    # and the held-out compositions cannot move); what a caption's words do in a new form ("a picture of") is then
    # not learned, and such forms are not shown.
    new_words_only: bool = True
    # With new_words_only: only these words' rows learn, every other row stays as it is ("frames": the frame phrases,
    # `picture_of`, ...): a run that teaches the frames cannot move what a keyword or a flag word reads as
    learn_words: Tuple[str, ...] = ()
    # Two words of one emoji: a caption's word (one read alone, `caption_heads`) before another word of an emoji it
    # names reads alone too ("a sad cat", "a bunny rabbit", "a cup of tea": `alone_partners`), and the typed forms
    # put a portion with its food ("a slice of pizza", "a pizza slice"); off in the runs before session 18, which
    # read such words as the captions' own
    pairs: bool = False
    # "show me" and "draw me" read as one word each, as the frame phrases do ("show_me"; off before session 18)
    verb_phrases: bool = False
    # "<portion> of" reads as one word ("cup_of", "slice_of": phrasing.PORTION_PHRASES), learned with the frames, and
    # typed forms put heads in it ("a cup of coffee"); off before session 19
    portion_phrases: bool = False
    portion_frame_weight: float = 0.004  # how often each portion frame is drawn, beside FRAMES' weights (session 19: 0.004)
    warmup_steps: int = 50
    # "constant": the rows keep moving at the full rate to the last step (the runs before session 20); "cosine": the
    # rate falls to 0 at `steps` after the warm-up, so the last steps settle the rows the frames share
    lr_decay: str = "constant"
    min_timestep: int = 250  # the distillation's timesteps: [min_timestep, 1000)
    # "layers": each text attention layer's output and the pooled text, on pixels the U-Net saw drawing the emoji,
    # traced once (attention_traces.py; some 20x cheaper a sample); "output": the U-Net's prediction, run each step
    objective: str = "layers"
    trace_draws: int = 3  # noised renders traced per emoji name ("layers")
    # A keyword that stands for several emoji ("doctor": health worker, stethoscope, ...) is taught, with the layers
    # objective, to draw the one of up to `modes` of them (the drawn target and others) whose effects it is nearest:
    # the error is the least over them, so the model draws one of them, not the mean of their effects (which draws
    # none). 1: the drawn target alone (the mean over draws), as in the shipped run.
    modes: int = 1
    # A new word that is a keyword gets as many rows as the name of the emoji it stands for has words, up to this
    # many ("music" -> "musical note": two), each starting as that word's row; 1: one row per word, as in the
    # shipped run (a taught run with 4 and modes 8 lost frames: docs/experiments/history.md)
    word_rows: int = 1
    frequency_power: float = 2.0  # a typed head is drawn in proportion to (its English frequency) ^ this
    threads: Optional[int] = None
    seed: int = 0
    log_every: int = 25
    save_every: int = 200


def vocabulary_texts(sampler) -> List[str]:
    """Texts that hold every word the sampler can produce: the table's heads, the names, and the words of its
    determiners, frames, flag forms and punctuation (each frame around a name, so that "{}" adds no word)."""
    name = sampler.names[0]
    texts = list(sampler.typed) + list(sampler.names) + ["an"]
    texts += [w for w, _ in DETERMINERS + PLURAL_DETERMINERS + PUNCTUATION]
    texts += [frame.format(name) for frame in [f for f, _, _ in FRAMES] + FLAG_FORMS]
    return texts


class TextTuning:
    """The pieces of a run: teacher and student encoders, the frozen U-Net, the renders, the sampler."""

    def __init__(self, cfg: TextTuningConfig, log=print):
        from ..models.caption_vocabulary import CaptionVocabulary
        from ..models.schedules import stage_noise_schedule
        from ..models.text_encoder import PromptEncoder, load_text_encoder
        from ..models.unet import ImagenUNet
        from .data import held_out_split, load_emoji, rendered_corpus
        from .keywords import KEYWORD_FILE, MEANINGS_FILE, flag_adjectives, plural, read_frequencies, read_meanings, read_table
        from .text_extension import extended_tokenizer, new_words

        self.cfg, self.log = cfg, log
        self.tokenizer0, self.encoder0 = load_text_encoder(cfg.weights)
        emojis = load_emoji()
        # The teacher's side: the original encoder's embeddings of the names, each computed once and cached.
        self.teacher = PromptEncoder(self.tokenizer0, self.encoder0, cache_size=len(emojis) + 16)
        self.vocabulary = CaptionVocabulary.from_folder(cfg.weights)
        self.unet = ImagenUNet.from_pretrained(os.path.join(cfg.weights, "unet_1")).float().requires_grad_(False).eval()
        self.scheduler = stage_noise_schedule("squaredcos_cap_v2", self.unet.config)  # shifted if the stage is folded
        held = set(held_out_split(emojis))
        self.index = {e.caption: i for i, e in enumerate(emojis)}
        self.corpus = rendered_corpus(emojis, self.unet.config.sample_size)
        self.names = [e.caption for e in emojis if e.caption not in held]
        flag_names = [e.caption for e in emojis if e.family == "flags"]
        table_path = cfg.keywords or os.path.join(cfg.weights, KEYWORD_FILE)
        table = read_table(table_path)
        plurals = {plural(t) for t in table} | {plural(n) for n in self.names}
        self.sampler = PhrasingSampler(self.names, table, plural_heads=[t for t in table if t in plurals],
                                       zipf=read_frequencies(table_path), frequency_power=cfg.frequency_power,
                                       meanings=read_meanings(os.path.join(os.path.dirname(table_path), MEANINGS_FILE)))
        captions = [e.caption for e in emojis] + (self.vocabulary.names if self.vocabulary is not None else [])
        self.free_old_rows = free_rows(self.tokenizer0, captions)
        if cfg.pairs:
            self.sampler.portions = PORTION_NOUNS
        # an old word that no caption holds (a keyword an earlier run added) may be read as several rows too
        free_words = [self.tokenizer0.convert_ids_to_tokens(i) for i in self.free_old_rows]
        alone = self.caption_heads()
        adjectives = flag_adjectives(self.sampler.table, flag_names)

        def starting_names(words: List[str]) -> Dict[str, List[int]]:  # the words read as a name's words
            return {**self.name_rows(words + free_words, alone), **self.flag_rows(adjectives)}

        saved = os.path.join(cfg.run_dir, "tokenizer")
        named = None  # (once the new words are known)
        self.phrases = (FRAME_PHRASES + (VERB_PHRASES if cfg.verb_phrases else [])
                        + (PORTION_PHRASES if cfg.portion_phrases else []))
        if cfg.portion_phrases:
            self.sampler.frames += portion_frames(cfg.portion_frame_weight)
        old_alone = [w for w in self.sampler.table if alone_word(w) in self.tokenizer0.get_vocab()]
        self.partners: Dict[str, List[str]] = {}
        if os.path.isdir(saved):  # a resumed run keeps the vocabulary it started with
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(saved)
        else:
            texts = [self.canonical(t) for t in vocabulary_texts(self.sampler)]
            phrases = [p for p in self.phrases if p not in " ".join(self.vocabulary.names if self.vocabulary else [])]
            # (a portion phrase is read before what an earlier run made of its noun: "can of" before "can"'s rows)
            first = [p for p in phrases if p in PORTION_PHRASES]
            phrases = [p for p in phrases if p not in first]
            # a phrase's words are not new, nor an adjective that only flags have
            words = new_words(extended_tokenizer(self.tokenizer0, [], phrases, adjectives, first_phrases=first), texts)
            named = starting_names(words)
            alone = [w for w in alone if alone_word(w) in named]
            self.partners = self.alone_partners(old_alone + alone, captions) if cfg.pairs else {}
            self.tokenizer = extended_tokenizer(self.tokenizer0, words, phrases, adjectives,
                                                {w: len(ids) for w, ids in named.items()}, alone, alone_context(),
                                                self.alone_heads(alone, named, captions), self.partners, first)
            self.tokenizer.save_pretrained(saved)
        if cfg.pairs and not self.partners:  # (a resumed run: its saved tokenizer's alone words)
            self.partners = self.alone_partners([w for w in self.sampler.table if alone_word(w) in self.tokenizer.get_vocab()],
                                                captions)
        self.old_vocab_size = len(self.tokenizer0)
        words = [w for w, i in sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if i >= self.old_vocab_size]
        # the old word each row of a word of several rows starts as ("music", "music_2" -> "musical", "note")
        vocab = self.tokenizer.get_vocab()
        named = starting_names(words) if named is None else named  # (a resumed run: from its saved tokenizer)
        self.row_starts = {row_word(w, k) if k > 1 else w: i for w, ids in named.items()
                           if len(ids) == 1 or row_word(w, 2) in vocab for k, i in enumerate(ids, 1)}
        self.encoder = self._student(words)
        # The anchor holds every caption of the corpus that the encoder already reads word for word (held-out
        # compositions too: it is a constraint on embeddings and shows the U-Net no image of them).
        unk = self.tokenizer0.unk_token_id
        self.anchor_names = [e.caption for e in emojis if unk not in self.tokenizer0(e.caption).input_ids]
        self.learnable = set(self.free_old_rows) | set(range(self.old_vocab_size, len(self.tokenizer)))
        if cfg.learn_words:
            self.learnable &= set(self.tokenizer.convert_tokens_to_ids(self.learned_words(cfg.learn_words)))
        if cfg.new_words_only:  # a form whose frame holds a caption's word could only be learned by moving captions
            self.sampler.frames = [f for f in self.sampler.frames if self.frame_learnable(f[0])]
        if cfg.objective == "layers":
            from .attention_traces import AttentionTraces

            renders = pixels_to_tensor(self.corpus[[self.index[n] for n in self.names]])
            self.traces = AttentionTraces(self.unet, self.scheduler, renders, self.names, self.teacher,
                                          draws=cfg.trace_draws, min_timestep=cfg.min_timestep, seed=cfg.seed)
        elif cfg.objective != "output":
            raise ValueError(f"objective must be 'layers' or 'output', not {cfg.objective!r}")
        if cfg.anchor_objective not in ("embeddings", "layers") or (cfg.anchor_objective == "layers"
                                                                    and cfg.objective != "layers"):
            raise ValueError(f"anchor_objective must be 'embeddings', or 'layers' with the layers objective, "
                             f"not {cfg.anchor_objective!r} with {cfg.objective!r}")
        log(f"{len(self.names)} names, {len(self.sampler.typed)} typed heads, {len(words)} new words, "
            f"{len(self.learnable)} rows learn" + (f", {len(self.partners)} alone words with partners" if cfg.pairs else ""))

    def caption_heads(self) -> List[str]:
        """The keywords that are words of captions and no name themselves ("cowboy" of "cowboy hat face", "money" of
        "money bag"): a row that captions hold cannot learn what the word alone means, so where it stands alone it is
        read as a word of its own (`alone_word`; with `word_rows` of 2 or more)."""
        vocab, free, names = self.tokenizer0.get_vocab(), set(self.free_old_rows), set(self.names)
        specials = set(self.tokenizer0.all_special_tokens)
        return sorted(w for w in self.sampler.table if w in vocab and vocab[w] not in free and w not in names
                      and w not in FORM_WORDS and w not in specials and "_" not in w)

    def name_rows(self, words: List[str], alone: List[str] = ()) -> Dict[str, List[int]]:
        """Of `words` (new words, or old ones that no caption holds) and of the `alone` forms of caption words, the
        keywords standing for an emoji whose name has up to `word_rows` words, all of them old: each with the ids of
        that name's words, which its rows start as (an old word's taught row starts again). The emoji is the one of
        its `modes` that shares the word's start, else one it means (`keyword_meanings.txt`); then with the fewest
        words, then the shortest name ("music" -> "musical note", "apples" -> "red apple", not "pie"; "puppy" -> "dog
        face"; "cowboy" alone -> "cowboy hat face"; "cell" -> "mobile phone", not "antenna bars"); a name of one
        word, only one that shares it or that it means ("bunny" -> "rabbit"). Not a word of the typed forms around a head ("emoji",
        "cute" of "a cute {}"), nor one that is several words already."""
        out: Dict[str, List[int]] = {}
        if self.cfg.word_rows < 2:
            return out
        vocab = self.tokenizer0.get_vocab()

        for w, read_as in [(w, w) for w in words] + [(w, alone_word(w)) for w in alone]:
            if ("_" in w or w not in self.sampler.table or w in FORM_WORDS or row_word(read_as, 2) in vocab
                    or (read_as != w and read_as in vocab)):
                continue
            meant = self.sampler.meanings.get(w, ([], 0.0))[0]
            # a name of one word only where it shares the word's start ("bananas" -> "banana") or is what WordNet
            # says it means ("bunny" -> "rabbit"): else one row, taught, may say more than one emoji of its many
            # would ("doctor" drew a pill as "pill")
            named = [(ids, n) for ids, n in ((self.old_ids(n), n) for n in self.sampler.modes(w))
                     if (2 <= len(ids) or shares_start(w, n) or n in meant) and len(ids) <= self.cfg.word_rows
                     and None not in ids]
            if named:  # the word's own spelling first: WordNet's meaning decides among names that do not share it
                sharing = {n for _, n in named if shares_start(w, n)}
                out[read_as] = min(named, key=lambda pair: (pair[1] not in sharing, not sharing and pair[1] not in meant,
                                                            len(pair[0]), len(pair[1])))[0]
        return out

    def alone_heads(self, alone: List[str], named: Dict[str, List[int]], captions: Sequence[str]) -> Dict[str, str]:
        """Of the `alone` words read as a name of several words, the name's last word, where it is another word and
        the two are no caption ("sad" -> "face" of "sad but relieved face"): "a sad face" reads as the alone word
        and "face", not as the caption words "sad", "face" (drawn as the confounded face)."""
        out: Dict[str, str] = {}
        captions = set(captions)
        for w in alone:
            ids = named[alone_word(w)]
            head = self.tokenizer0.convert_ids_to_tokens(ids[-1])
            if len(ids) >= 2 and head != w and f"{w} {head}" not in captions:
                out[w] = head
        return out

    def alone_partners(self, alone: Sequence[str], captions: Sequence[str]) -> Dict[str, List[str]]:
        """Of each `alone` word, the one-word heads it may stand before for an emoji they both name, with or without
        "of" ("sad" -> "cat" of the crying cat, "bunny" -> "rabbit", "cup" -> "tea" of the teacup), where no caption
        has the two words side by side ("red" before "apple" is the red apple's caption: its words stay)."""
        side_by_side = set()
        for caption in captions:
            words = re.findall(r"\w+", caption.lower())
            side_by_side.update(zip(words, words[1:]))
            side_by_side.update((a, c) for a, b, c in zip(words, words[1:], words[2:]) if b == "of")
        out: Dict[str, List[str]] = {}
        for w in alone:
            partners = {h for n in self.sampler.table.get(w, []) for h in self.sampler.heads_of(n)
                        if re.fullmatch(r"\w+", h) and h[:4] != w[:4] and h not in FORM_WORDS and (w, h) not in side_by_side}
            if partners:
                out[w] = sorted(partners)
        return out

    def old_ids(self, name: str) -> List[Optional[int]]:
        """The ids of a name's words in the encoder the run starts from, None for a word it does not know."""
        unk = self.tokenizer0.unk_token_id
        return [None if i == unk else i for i in self.tokenizer0(name, add_special_tokens=False).input_ids]

    def flag_rows(self, adjectives: List[str]) -> Dict[str, List[int]]:
        """The flag words of countries whose names have several words, each with the ids of those words: "flag:
        american" reads as "flag: united states" (`american_flag`, `american_flag_2` start as "united", "states"),
        where one row, the mean of two words, drew some other flag. Not one that is several words already."""
        out: Dict[str, List[int]] = {}
        vocab = self.tokenizer0.get_vocab()
        for adjective in adjectives:
            word = flag_word(adjective)
            if row_word(word, 2) in vocab:
                continue
            flag = self.sampler.table[f"{adjective} flag"][0]
            # the country's words as its flag's caption reads them (alone, "japan" is a word of its own of a run before)
            ids = self.old_ids(flag)[2:] if flag.startswith("flag: ") else self.old_ids(flag)
            if len(ids) >= 2 and None not in ids:
                out[word] = ids
        return out

    def learned_words(self, words: Sequence[str]) -> List[str]:
        """The words of `learn_words` in the run's vocabulary, with their further rows: "frames" standing for the frame
        phrases, "form-words" for the typed forms' other words, "pairs" for the alone words that have partners and
        the portion nouns."""
        vocab = self.tokenizer.get_vocab()
        named = [phrase_token(p) for p in self.phrases] if "frames" in words else []
        if "form-words" in words:  # the other words of the typed forms ("emoji", "draw", "some"), where free
            named += sorted(FORM_WORDS)
        if "pairs" in words:
            named += [alone_word(w) for w in self.partners] + list(PORTION_NOUNS)
        named += [w for w in words if w not in ("frames", "form-words", "pairs")]
        # with the further rows of a word of several ("sad_alone", "sad_alone_2", ...)
        return [r for w in named if w in vocab for r in word_and_further_rows(w, vocab)]

    def frame_learnable(self, frame: str) -> bool:
        """Whether every word of `frame` ("a picture of {}") but a leading article is a word whose row learns."""
        ids = self.tokenizer(" ".join(frame.replace("{}", " ").split()), add_special_tokens=False).input_ids
        articles = set(self.tokenizer.convert_tokens_to_ids(["a", "an", "the"]))
        ids = ids[1:] if ids[:1] and ids[0] in articles else ids
        return all(i in self.learnable for i in ids)

    def canonical(self, prompt: str) -> str:
        """What the pipeline gives the encoder for a prompt (the one shared normalisation)."""
        from ..models.text_encoder import canonical_prompt

        return canonical_prompt(prompt, self.vocabulary)

    @torch.no_grad()
    def _student(self, words: List[str]):
        """A copy of the encoder with a row per new word: the mean row of the old words of an emoji it names."""
        import copy

        encoder = copy.deepcopy(self.encoder0)
        old = encoder.get_input_embeddings().weight.detach().clone()
        vocab = self.tokenizer0.get_vocab()
        for word, start in self.row_starts.items():  # an old word read anew starts again as its name's first word
            if word in vocab:
                old[vocab[word]] = old[start]
        head_of_word: Dict[str, str] = {}  # a word -> the first typed head that holds it
        for typed in self.sampler.typed:
            for w in re.findall(r"\w+", typed):
                head_of_word.setdefault(w, typed)
        rows = [old[ids].mean(0) if ids else old.mean(0)
                for ids in (self._starting_words(w, vocab, head_of_word) for w in words)]
        encoder.set_input_embeddings(GrowingEmbedding(old, torch.stack(rows) if rows else old[:0]))
        encoder.config.vocab_size = old.shape[0] + len(words)
        return encoder.requires_grad_(True).train()

    def _starting_words(self, word: str, vocab: Dict[str, int], head_of_word: Dict[str, str]) -> List[int]:
        """The old words a new word's row starts from: a row of a word of several rows, its word of the name
        ("music_2" -> "note"); a frame phrase, "a"; a plural's singular ("cats" -> "cat"); else the words that an
        emoji it names has and the typed head lacks ("japanese_flag" of "japanese flag" -> "japan" of "flag: japan";
        "kitty" -> "cat", "face"); else all of that name's words."""
        if word in self.row_starts:
            return [self.row_starts[word]]
        flag_head = f"{word[:-len(FLAG_SUFFIX)]} flag" if word.endswith(FLAG_SUFFIX) else None
        if flag_head in self.sampler.table:
            head = flag_head
        elif "_" in word:  # a frame phrase ("picture_of"), which should come to read as little as an article does
            return [vocab["a"]] if "a" in vocab else []
        else:
            for singular in (word[:-3] + "y", word[:-2], word[:-1]) if word.endswith("s") else ():
                if singular in vocab:
                    return [vocab[singular]]
            head = head_of_word.get(word)
        if head is None:
            return []
        name_words = [w for w in re.findall(r"\w+", self.sampler.table[head][0]) if w in vocab]
        head_words = set(re.findall(r"\w+", head))
        return [vocab[w] for w in name_words if w not in head_words] or [vocab[w] for w in name_words]

    def embed(self, encoder, tokenizer, prompts: List[str]):
        tok = tokenizer(prompts, padding=True, truncation=True, max_length=self.tokenizer0.model_max_length,
                        return_tensors="pt")
        mask = tok["attention_mask"].bool()
        hidden = encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        return hidden * mask[..., None], mask

    def losses(self, rng: random.Random, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        pairs, typed = [], []
        for _ in range(50 * cfg.batch_size):
            if len(pairs) == cfg.batch_size:
                break
            pair = self.sampler.sample_with_modes(rng)
            prompt = self.canonical(pair[0])
            # Only the free rows learn: a form without such a word would teach nothing, so it is drawn again.
            if cfg.new_words_only and not self.learnable.intersection(self.tokenizer(prompt).input_ids):
                continue
            pairs.append(pair)
            typed.append(prompt)
        names = [n for _, n, _ in pairs]
        if cfg.objective == "layers":
            k = max(1, cfg.modes)
            # each draw's target, then up to k - 1 other emoji it may be drawn as (most draws have none)
            picks = [[n] + rng.sample([m for m in modes if m != n], min(k - 1, len(modes) - 1)) for _, n, modes in pairs]
            owner = torch.tensor([i for i, p in enumerate(picks) for _ in p])
            slot = torch.tensor([j for p in picks for j in range(len(p))])
            rows = self.traces.sample_rows([n for p in picks for n in p], generator)
            embeds, mask = self.embed(self.encoder, self.tokenizer, typed)
            errors = self.traces.errors(rows, embeds[owner], mask[owner])
            table = torch.full((len(picks), k), float("inf")).index_put((owner, slot), errors)
            distill = table.min(1).values.mean()
            return self._with_anchor(distill, rng, generator)
        images = pixels_to_tensor(self.corpus[[self.index[n] for n in names]])
        noise = torch.randn(images.shape, generator=generator)
        # The upper timesteps, where what is drawn is still open and the text decides it (near t = 0 the noisy image
        # already holds the emoji and the prediction hardly depends on the text: a weak signal for the encoder).
        t = torch.randint(self.cfg.min_timestep, self.scheduler.config.num_train_timesteps, (len(pairs),), generator=generator)
        noisy = self.scheduler.add_noise(images, noise, t)
        with torch.no_grad():
            target = self.unet(noisy, t, *self.teacher.encode(names)).sample
        embeds, mask = self.embed(self.encoder, self.tokenizer, typed)
        distill = F.mse_loss(self.unet(noisy, t, embeds, mask).sample, target)
        return self._with_anchor(distill, rng, generator)

    def _with_anchor(self, distill: torch.Tensor, rng: random.Random, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        anchors = ([rng.choice(self.anchor_names) for _ in range(cfg.anchor_batch)]
                   if self.anchor_names and not cfg.new_words_only else [])  # nothing old moves: no anchor needed
        if not anchors:
            return dict(distill=distill, anchor=torch.zeros(()))
        fixed, fixed_mask = self.teacher.encode(anchors)
        moved, moved_mask = self.embed(self.encoder, self.tokenizer, anchors)
        if cfg.anchor_objective == "layers":
            rows = self.traces.sample_rows([rng.choice(self.names) for _ in anchors], generator)
            return dict(distill=distill, anchor=self.traces.anchor_loss(rows, moved, moved_mask, fixed, fixed_mask))
        anchor = (moved - fixed).pow(2).sum() / (fixed_mask.sum() * fixed.shape[-1])
        return dict(distill=distill, anchor=anchor)

    def save(self, out: str) -> None:
        """tokenizer/ and text_encoder/ in `out`, as transformers saves them (one plain embedding table)."""
        import copy

        os.makedirs(out, exist_ok=True)
        self.tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
        encoder = copy.deepcopy(self.encoder)
        encoder.set_input_embeddings(encoder.get_input_embeddings().merged())
        encoder.save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)


def free_rows(tokenizer, captions: List[str]) -> List[int]:
    """The ids of the tokenizer's plain words that none of `captions` holds: rows that can learn while every caption
    encodes exactly as before."""
    used = {i for ids in tokenizer(list(captions)).input_ids for i in ids} | set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in used]


def lr_factor(step: int, warm_from: int, cfg: TextTuningConfig) -> float:
    """The share of each group's learning rate at `step`: a linear warm-up from `warm_from` (the start, or the step a
    resumed run's optimizer state was dropped), then constant or a cosine down to 0 at cfg.steps."""
    warm = min(1.0, (step - warm_from + 1) / cfg.warmup_steps)
    if cfg.lr_decay == "constant":
        return warm
    if cfg.lr_decay != "cosine":
        raise ValueError(f"unknown lr_decay {cfg.lr_decay!r} (constant or cosine)")
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, cfg.steps))))


def tune_text(cfg: TextTuningConfig, max_minutes: Optional[float] = None, log=print) -> int:
    """Trains (or resumes) the run; writes cfg.out at the end. Returns the step reached."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.run_dir, exist_ok=True)
    with open(os.path.join(cfg.run_dir, "text_tuning.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2)
    run = TextTuning(cfg, log)
    table = run.encoder.get_input_embeddings()
    layers = [p for p in run.encoder.parameters() if p is not table.new and p is not table.old]
    groups = [dict(params=[table.new], lr=cfg.new_word_lr)]
    if not cfg.new_words_only:
        groups.append(dict(params=layers, lr=cfg.lr))
    if cfg.old_word_lr and not cfg.new_words_only:
        groups.append(dict(params=[table.old], lr=cfg.old_word_lr))
    for p in layers:
        p.requires_grad_(not cfg.new_words_only)
    table.old.requires_grad_(bool(cfg.old_word_lr) and not cfg.new_words_only)
    if cfg.new_words_only and run.free_old_rows:
        # The old words no caption holds learn as the new ones do; every other old row gets a zero gradient, so Adam
        # leaves it bit for bit as it was.
        free = torch.zeros(table.old.shape[0], 1)
        free[[i for i in run.free_old_rows if i in run.learnable]] = 1.0
        table.old.requires_grad_(True)
        table.old.register_hook(lambda grad: grad * free)
        groups.append(dict(params=[table.old], lr=cfg.new_word_lr))
    if cfg.learn_words:  # the new rows of other words stay too
        learned_new = torch.zeros(table.new.shape[0], 1)
        learned_new[[i - run.old_vocab_size for i in run.learnable if i >= run.old_vocab_size]] = 1.0
        table.new.register_hook(lambda grad: grad * learned_new)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lrs = [g["lr"] for g in groups]
    ckpt_path = os.path.join(cfg.run_dir, CHECKPOINT)
    step = warm_from = 0
    rng, generator = random.Random(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed + 1)
    if os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, weights_only=False)
        run.encoder.load_state_dict(ckpt["encoder"])
        step = ckpt["step"]
        try:
            opt.load_state_dict(ckpt["optimizer"])
        except ValueError:  # the parameter groups changed (learning rates of their own): Adam's moments start afresh
            warm_from = step
            log(f"optimizer state not loaded (its groups changed); the learning rates warm up again from step {step}")
        rng.setstate(ckpt["rng"])
        generator.set_state(ckpt["generator"])
        log(f"resumed from {ckpt_path} at step {step}")

    def save_checkpoint():
        tmp = ckpt_path + ".tmp"
        torch.save(dict(encoder=run.encoder.state_dict(), optimizer=opt.state_dict(), step=step, rng=rng.getstate(),
                        generator=generator.get_state()), tmp)
        os.replace(tmp, ckpt_path)

    t0, deadline = time.time(), (time.time() + max_minutes * 60 if max_minutes else None)
    first, avg = step, {}
    while step < cfg.steps and (deadline is None or time.time() < deadline):
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr * lr_factor(step, warm_from, cfg)
        parts = run.losses(rng, generator)
        loss = parts["distill"] + cfg.anchor_weight * parts["anchor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.encoder.parameters(), 1.0)
        opt.step()
        step += 1
        avg = {k: 0.9 * avg.get(k, v.item()) + 0.1 * v.item() for k, v in parts.items()}
        if step % cfg.log_every == 0:
            traced = f", {run.traces.traced.float().mean():.0%} of the names traced" if cfg.objective == "layers" else ""
            log(f"step {step} distill {avg['distill']:.5f} anchor {avg['anchor']:.6f} "
                f"{(step - first) / (time.time() - t0):.2f} steps/s{traced}")
        if step % cfg.save_every == 0:
            save_checkpoint()
    if step > first:  # (a run asked for no more steps than its checkpoint has only exports it)
        save_checkpoint()
    run.save(cfg.out)
    log(f"stopped at step {step}; text encoder and tokenizer in {cfg.out}")
    return step
