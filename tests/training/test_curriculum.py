"""The block curriculum, the text-use measure, emoji families and the shared prompt normalisation."""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from imagen_app.training.curriculum import (BlockCurriculum, CurriculumConfig, family_sample, summarize_by_family,
                                   swapped_tones, text_use, two_tone_sample, word_order_use,
                                   wrong_captions_within_family)
from imagen_app.models.schedules import noise_schedule
from imagen_app.models.text_encoder import normalize_prompt


@pytest.mark.parametrize("typed, canonical", [
    ("woman firefighter dark skin tone", "woman firefighter: dark skin tone"),
    ("Woman Firefighter:  Dark Skin Tone", "woman firefighter: dark skin tone"),
    ("men with bunny ears light skin tone medium light skin tone", "men with bunny ears: light skin tone, medium-light skin tone"),
    ("flag of Japan", "flag: japan"),
    ("the flag of the united states", "flag: united states"),
    ("japan flag", "flag: japan"),
    ("flag japan", "flag: japan"),
    ("flag for japan", "flag: japan"),
    # names with "flag" that are not a country's flag, and a tone on its own, stay as they are
    ("white flag", "white flag"), ("chequered flag", "chequered flag"), ("flag in hole", "flag in hole"),
    ("open mailbox with raised flag", "open mailbox with raised flag"), ("dark skin tone", "dark skin tone"),
])
def test_typed_forms_become_the_cldr_form(typed, canonical):
    assert normalize_prompt(typed) == canonical


def test_every_training_caption_is_its_own_normal_form():
    """Training captions and the CLDR names users copy pass through unchanged, so the shipped model's
    captions mean what they meant; the one rewrite is the "flag for X" alias, which becomes the flag's CLDR name."""
    from imagen_app.training.data import emoji_dataset

    data = emoji_dataset(32, "all")
    changed = {c: normalize_prompt(c) for caps in data.captions for c in caps if normalize_prompt(c) != " ".join(c.split())}
    assert 250 < len(changed) < 600
    rewritten = {c: n for c, n in changed.items() if n.replace(" ", "") != c.replace(" ", "")}  # not just spacing
    assert all(c.startswith("flag for ") and n == "flag: " + c[len("flag for "):] for c, n in rewritten.items())
    assert "flag: japan" in {normalize_prompt(c) for caps in data.captions for c in caps}


def test_families_of_the_corpus():
    from imagen_app.training.data import FAMILIES, load_emoji

    fam = {e.caption: e.family for e in load_emoji()}
    assert fam["flag: japan"] == "flags" and fam["scotland"] == "flags"
    assert fam["woman firefighter: dark skin tone"] == "skin-tone variants"
    assert fam["woman firefighter"] == "other people" and fam["family man woman boy"] == "other people"
    assert fam["panda"] == "single emoji" and fam["white flag"] == "single emoji"
    counts = {f: sum(v == f for v in fam.values()) for f in FAMILIES}
    assert all(counts[f] > 100 for f in FAMILIES) and sum(counts.values()) == len(fam)


def test_wrong_captions_stay_in_the_family_and_differ():
    caps = ["a", "b", "c", "x", "y"]
    fams = ["f", "f", "f", "g", "g"]
    wrong = wrong_captions_within_family(caps, fams, offset=1)
    assert wrong == ["b", "c", "a", "y", "x"]
    assert family_sample(fams, 2, seed=0) == sorted(family_sample(fams, 2, seed=0))
    assert len(family_sample(fams, 2)) == 4


class ScaledOracle(torch.nn.Module):
    """A stand-in U-Net (v-prediction) whose x0 is the true image scaled by 0.9 for the right caption (the first
    third of the batch text_use sends), 0.5 for the wrong one and 0 for the null condition."""

    def __init__(self, x0, alphas):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.x0, self.alphas = x0, alphas
        self.config = SimpleNamespace(prediction_type="v_prediction")

    def forward(self, x, t, embeds, mask):
        n = x.shape[0] // 3
        a = self.alphas[t[0]]
        scale = torch.tensor([0.9] * n + [0.5] * n + [0.0] * n).view(-1, 1, 1, 1)
        x0 = self.x0.repeat(3, 1, 1, 1) * scale
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return SimpleNamespace(sample=a.sqrt() * eps - (1 - a).sqrt() * x0)  # v for that x0


class ConstantEncoder:
    def encode(self, prompts, device=None, dtype=torch.float32):
        return torch.zeros(len(prompts), 2, 4, dtype=dtype), torch.ones(len(prompts), 2, dtype=torch.bool)


def test_text_use_compares_right_wrong_and_null_errors():
    scheduler = noise_schedule("squaredcos_cap_v2", "v_prediction")
    x0 = torch.rand(5, 3, 8, 8) * 2 - 1
    unet = ScaledOracle(x0, scheduler.alphas_cumprod.float())
    m = text_use(unet, scheduler, ConstantEncoder(), x0, list("abcde"), list("edcba"), batch_size=5)
    # err(right) = 0.01 x0^2, err(wrong) = 0.25 x0^2, err(null) = x0^2
    assert np.allclose(m["specificity"], 1 - 0.01 / 0.25, atol=1e-4)
    assert np.allclose(m["gain"], 1 - 0.01, atol=1e-4)
    summary = summarize_by_family(m, ["f"] * 3 + ["g"] * 2)
    assert summary["f"]["count"] == 3 and abs(summary["g"]["specificity"] - 0.96) < 1e-4


def test_swapped_tones_exchange_the_two_people_and_stay_in_the_corpus():
    from imagen_app.training.data import load_emoji

    assert swapped_tones("kiss woman man: light skin tone, medium-dark skin tone") == \
        "kiss woman man: medium-dark skin tone, light skin tone"
    for caption in ["kiss woman man: light skin tone", "handshake: dark skin tone, dark skin tone", "flag: japan",
                    "dark skin tone", "panda"]:
        assert swapped_tones(caption) is None
    captions = [e.caption for e in load_emoji()]
    two_tones = [c for c in captions if swapped_tones(c)]
    assert len(two_tones) >= 300 and set(map(swapped_tones, two_tones)) == set(two_tones)  # each swap is an emoji
    sample = two_tone_sample(captions, 40, seed=1)
    assert len(sample) == 40 and sample == sorted(sample) and all(swapped_tones(captions[i]) for i in sample)


class BagOfWordsEncoder:
    """Each word a fixed random vector, with no trace of where it stands: the shipped small T5 in effect."""

    def encode(self, prompts, device=None, dtype=torch.float32):
        words = [p.replace(",", " ,").split() for p in prompts]
        length = max(map(len, words))
        out = torch.zeros(len(prompts), length, 16)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                out[i, j] = torch.randn(16, generator=torch.Generator().manual_seed(sum(map(ord, w)) * 7919 + len(w)))
        mask = torch.tensor([[j < len(ws) for j in range(length)] for ws in words])
        return out.to(dtype), mask


def test_word_order_use_is_zero_without_positions_and_not_with_them():
    from conftest import small_unet

    scheduler = noise_schedule("squaredcos_cap_v2", "v_prediction")
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    captions = ["kiss woman man: light skin tone, dark skin tone", "handshake: medium skin tone, dark skin tone",
                "men wrestling: dark skin tone, medium-light skin tone"]
    blind = word_order_use(small_unet(), scheduler, BagOfWordsEncoder(), x0, captions)
    assert blind["count"] == 3 and abs(blind["specificity"]) < 1e-6 and blind["gain"] != 0
    positions = small_unet(text_position_embeddings=16)
    torch.nn.init.normal_(positions.text_positions)
    assert abs(word_order_use(positions, scheduler, BagOfWordsEncoder(), x0, captions)["specificity"]) > 1e-3


def _curriculum(tmp_path, families, **kw):
    cfg = CurriculumConfig(families=["s", "f"], block_size=3, block_steps={"s": 10, "f": 20}, focus=0.5, review=0.25, **kw)
    return BlockCurriculum(cfg, families, str(tmp_path / "curriculum.json"))


def test_blocks_go_weakest_first_and_the_plan_survives_a_restart(tmp_path):
    families = ["s"] * 7 + ["f"] * 4 + ["other"] * 5
    specificity = np.array([0.5, 0.1, 0.9, 0.3, 0.2, 0.7, 0.0] + [0.4, 0.05, 0.6, 0.95] + [np.inf] * 5)
    cur = _curriculum(tmp_path, families)
    assert cur.plan_pass(0, specificity) == 6 + 3  # 0.9 and 0.95 already hold (>= 0.8): they leave
    blocks = cur.passes[0]["blocks"]
    singles = [b for f, b in blocks if f == "s"]
    assert singles == [[6, 1, 4], [3, 0, 5]]  # weakest first
    assert [b for f, b in blocks if f == "f"] == [[8, 7, 9]]
    assert cur.end_step == 10 + 10 + 20
    again = _curriculum(tmp_path, families)  # a resumed run reads the same plan
    assert again.passes == cur.passes
    rng_a, rng_b = random.Random(1), random.Random(1)
    assert [cur.indices(s, 8, rng_a) for s in range(40)] == [again.indices(s, 8, rng_b) for s in range(40)]


def test_batches_mix_block_review_and_whole_corpus(tmp_path):
    families = ["s"] * 6 + ["f"] * 3 + ["other"] * 91
    cur = _curriculum(tmp_path, families)
    cur.plan_pass(0, np.r_[np.zeros(9), np.full(91, np.inf)])
    rng = random.Random(0)
    p, k = cur.block_at(0)
    first_block = set(p["blocks"][k][1])
    batch = cur.indices(0, 8, rng)
    assert set(batch[:4]) <= first_block and len(batch) == 8  # half from the block, no review in the first block
    second = [b for _, b in p["blocks"]][1]
    later_step = cur.cfg.block_steps[p["blocks"][0][0]]
    batch = cur.indices(later_step, 8, rng)
    assert set(batch[:4]) <= set(second) and set(batch[4:6]) <= first_block
    past = [cur.indices(cur.end_step + s, 8, rng) for s in range(50)]  # past the plan: uniform over the corpus
    assert sum(i >= 9 for b in past for i in b) > 0.8 * 400


def test_kept_family_share_is_in_every_batch(tmp_path):
    """`keep` draws a share of every batch from a whole family, during the blocks and past the plan alike."""
    families = ["s"] * 6 + ["f"] * 3 + ["other"] * 91
    cur = _curriculum(tmp_path, families, keep={"f": 0.25})
    cur.plan_pass(0, np.r_[np.zeros(9), np.full(91, np.inf)])
    rng = random.Random(0)
    flags = {6, 7, 8}
    for step in (0, cur.end_step - 1, cur.end_step + 5):
        batches = [cur.indices(step, 16, rng) for _ in range(40)]
        assert all(len(b) == 16 and set(b[:4]) <= flags for b in batches)  # 25% of 16 from the kept family
    # past the plan, the rest is uniform: the kept family's share is about 25% + 3% of the rest, not 3%
    past = [i for _ in range(200) for i in cur.indices(cur.end_step + 1, 16, rng)]
    share = sum(i in flags for i in past) / len(past)
    assert 0.24 < share < 0.33


def test_caption_share_draws_from_matching_captions(tmp_path):
    """`caption_shares` draws a share of every batch from the emoji whose caption matches a pattern."""
    families = ["s"] * 6 + ["f"] * 3 + ["other"] * 91
    captions = [f"emoji {i}" for i in range(100)]
    captions[50] = "kiss: dark skin tone, light skin tone"
    captions[60] = "kiss: light skin tone, dark skin tone"
    cfg = CurriculumConfig(families=[], caption_shares={"skin tone, .*skin tone": 0.5})
    cur = BlockCurriculum(cfg, families, captions=captions)
    rng = random.Random(0)
    batches = [cur.indices(s, 8, rng) for s in range(30)]
    assert all(set(b[:4]) <= {50, 60} for b in batches)
    assert sum(i in (50, 60) for b in batches for i in b[4:]) < 10  # the rest is uniform over the corpus
    with pytest.raises(ValueError, match="captions"):
        BlockCurriculum(cfg, families)


def test_shares_that_draw_more_than_a_batch_are_refused(tmp_path):
    """`keep` merges with the config it extends, so an override that leaves out an inherited family keeps its
    share; shares drawing more than the batch would silently cut the last ones, so they are refused."""
    from imagen_app.training.curriculum import make_curriculum

    data = SimpleNamespace(families=["a", "a", "b", "c"], captions=[["x"], ["y"], ["z"], ["w"]])

    def cfg(keep, caption_shares=None):
        return SimpleNamespace(batch_size=32, run_dir=str(tmp_path), curriculum=dict(
            families=[], keep=keep, caption_shares=caption_shares or {}))

    assert make_curriculum(cfg({"a": 0.5, "b": 0.5}), data, print) is not None
    with pytest.raises(ValueError, match="draw 34 images for a batch of 32"):
        make_curriculum(cfg({"a": 0.5, "b": 0.5}, {"x": 0.06}), data, print)
    assert make_curriculum(cfg({"a": 0.5, "b": 0.5, "c": 0}, {"x": 0}), data, print) is not None
