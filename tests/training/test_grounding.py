"""The grounding loss (training/grounding.py): object phrases, their masks and token columns, the loss's two terms,
and its way through diffusion_loss and a run's batches."""
import dataclasses
import random

import numpy as np
import pytest
import torch

from imagen_app.models.text_encoder import PromptEncoder
from imagen_app.models.unet import ImagenUNet
from imagen_app.training.grounding import (AttentionGrabber, GroundingTargets, grounding_loss, grounding_targets,
                                           phrase_columns)
from imagen_app.training.scenes import SceneSpec, compose, grounding_phrases, pluralize

from conftest import SMALL_UNET


def test_grounding_phrases_mark_each_object_with_its_own_ink(scene_world):
    rng = random.Random(3)
    a, b = sorted(scene_world.colours_of)[:2]
    ca, cb = scene_world.colours_of[a][0], [c for c in scene_world.colours_of[b] if c != scene_world.colours_of[a][0]][0]
    spec = SceneSpec("colour attribution", ((a, ca), (b, cb)))
    canvas, boxes = compose(spec, 64, scene_world.renders, rng)
    phrases = grounding_phrases(spec, canvas, boxes)
    assert [p for p, _ in phrases] == [f"{ca} {a}", f"{cb} {b}"]  # as every caption writes them, in caption order
    for (_, mask), (_, _, (x0, y0, x1, y1)) in zip(phrases, boxes):
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert mask.any() and not (mask & ~inside).any()  # ink, and only within the object's own box
        assert (canvas[mask].min(axis=1) < 235).all() and (canvas[inside & ~mask] >= 235).all()  # ink, not paper
    assert not (phrases[0][1] & phrases[1][1]).any()

    count = SceneSpec("counting", ((a, None),), count=3)
    canvas, boxes = compose(count, 64, scene_world.renders, rng)
    (phrase, mask), = grounding_phrases(count, canvas, boxes)  # three copies: one phrase, the plural
    assert phrase == pluralize(a) and phrase in count.captions()[0]
    for _, _, (x0, y0, x1, y1) in boxes:
        assert mask[y0:y1, x0:x1].any()


def test_phrase_columns_are_the_phrase_tokens_after_the_null_tokens(tiny_pipe):
    encoder = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder)
    caption = "A picture of a red heart and a green circle"
    text = encoder.canonical(caption)
    ids = encoder._tokenize(text, truncation=True)["input_ids"]
    columns = phrase_columns(encoder, caption, ["red heart", "green circle", "panda"], num_null_tokens=2)
    assert columns[2] == []  # not in the caption
    tokens = [tiny_pipe.tokenizer.decode([ids[c - 2]]).strip() for c in columns[0] + columns[1]]
    assert "".join(tokens[:len(columns[0])]).replace(" ", "") == "redheart"
    assert "".join(tokens[len(columns[0]):]).replace(" ", "") == "greencircle"
    assert max(columns[0]) < min(columns[1])
    # a phrase is found after the one before it: the second "heart" here is the blue one's
    repeated = phrase_columns(encoder, "red heart and blue heart", ["red heart", "heart"], num_null_tokens=0)
    assert min(repeated[1]) > max(repeated[0])


def _targets(mask: np.ndarray, rows=(0,), columns=((1,),)) -> GroundingTargets:
    return GroundingTargets(torch.tensor(rows), torch.tensor(columns), torch.from_numpy(mask[None].astype(np.float32)))


def test_grounding_loss_is_low_for_attention_on_the_object_and_high_for_attention_elsewhere():
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True  # the object: the left half
    left = torch.zeros(1, 2, 4 * 4, 3)  # (B, heads, h*w, context): a 4 x 4 map, 1 null token + 2 text tokens
    right = torch.zeros_like(left)
    for p in range(16):
        on_left = p % 4 < 2
        left[0, :, p] = torch.tensor([0.02, 0.96, 0.02]) if on_left else torch.tensor([0.96, 0.02, 0.02])
        right[0, :, p] = torch.tensor([0.96, 0.02, 0.02]) if on_left else torch.tensor([0.02, 0.96, 0.02])
    targets = _targets(mask)
    token_left, pixel_left = grounding_loss([(left, 4, 4)], targets)
    token_right, pixel_right = grounding_loss([(right, 4, 4)], targets)
    assert float(token_left) < 0.001 and float(token_right) > 0.9
    assert float(pixel_left) < 0.05 < 1.0 < float(pixel_right)
    # a row whose text was dropped (classifier-free guidance) teaches nothing
    dropped = grounding_loss([(right, 4, 4)], targets, rows=torch.tensor([False]))
    assert float(dropped[0]) == float(dropped[1]) == 0


def test_the_grounding_loss_moves_a_words_attention_onto_its_object():
    """Taught by the grounding loss alone, a small U-Net's attention from the pixels of the object's half to the
    object's word rises and the token term falls: the loss reaches the attention through its gradients."""
    torch.manual_seed(0)
    unet = ImagenUNet(**SMALL_UNET)  # 8 x 8, text attention at 4 x 4
    images = torch.randn(2, 3, 8, 8)
    embeds, text_mask = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True
    targets = GroundingTargets(torch.tensor([0, 1]), torch.tensor([[1], [2]]),
                               torch.from_numpy(np.stack([mask, ~mask]).astype(np.float32)))  # word 1 left, word 2 right
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    terms = []
    for _ in range(40):
        with AttentionGrabber(unet, min_side=4) as grabber:
            unet(images, torch.tensor([500, 500]), embeds, text_mask)
        token_term, pixel_term = grounding_loss(grabber.taken, targets)
        terms.append(float(token_term))
        opt.zero_grad()
        (token_term + pixel_term).backward()
        opt.step()
    assert terms[0] > 0.2 and terms[-1] < terms[0] / 2
    assert not any(unet.down_levels[1].attns[0].recorders.values())  # the grabber let go of the layers


def test_grounding_needs_live_scenes_and_two_non_negative_weights(tmp_path):
    from imagen_app.training.config import TrainConfig

    base = dict(run_dir=str(tmp_path), text_encoder="t5", resolution=32)
    with pytest.raises(ValueError, match="needs live_scenes"):
        TrainConfig(**base, grounding_loss_weights=[0.01, 0.001])
    with pytest.raises(ValueError, match="token term"):
        TrainConfig(**base, live_scenes=True, grounding_loss_weights=[0.01])
    assert TrainConfig(**base, live_scenes=True, grounding_loss_weights=[0.01, 0.0]).grounding_loss_weights == [0.01, 0.0]


def test_a_grounded_batch_carries_each_scene_rows_phrases_into_the_loss(tiny_pipe, scene_world, tmp_path):
    from imagen_app.models.schedules import noise_schedule
    from imagen_app.training.config import TrainConfig
    from imagen_app.training.data import CaptionedImages
    from imagen_app.training.scenes import FAMILY_PREFIX, LiveScenes
    from imagen_app.training.tiny import tiny_unet
    from imagen_app.training.train import diffusion_loss, make_batch

    cfg = TrainConfig(run_dir=str(tmp_path), text_encoder="t5", resolution=32, live_scenes=True,
                      grounding_loss_weights=[0.0, 0.0], cond_drop_prob=0.0)
    data = CaptionedImages(np.full((2, 32, 32, 3), 255, np.uint8), [["panda"], ["a cat and a dog"]],
                           ["single emoji", FAMILY_PREFIX + "colour attribution"])
    idx = [0, 1, 1, 0]
    images, captions, _, phrases = make_batch(data, cfg, random.Random(0), "cpu", idx, LiveScenes(scene_world, 32),
                                              grounded=True)
    assert phrases[0] == phrases[3] == [] and [len(p) for p in phrases[1:3]] == [2, 2]
    for caption, row in zip(captions[1:3], phrases[1:3]):
        assert all(p in caption for p, _ in row)
    plain = make_batch(data, cfg, random.Random(0), "cpu", idx, LiveScenes(scene_world, 32))  # same draws, 3 items
    assert len(plain) == 3 and plain[1] == captions and torch.equal(plain[0], images)

    encoder = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder)
    embeds, mask = encoder.encode(captions)
    targets = grounding_targets(encoder, captions, phrases, 1, "cpu")
    assert targets.rows.tolist() == [1, 1, 2, 2]
    torch.manual_seed(0)
    unet = ImagenUNet(**dict(SMALL_UNET, sample_size=32))  # text attention (no self-attention) at 16 x 16
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    with pytest.raises(ValueError, match="no text attention layer"):  # a loss that would silently teach nothing
        diffusion_loss(tiny_unet(32, lowres=False, text_dim=16), noise_schedule(), images, embeds, mask, None,
                       dataclasses.replace(cfg, grounding_min_side=16), grounding=targets)

    def loss(weights):
        torch.manual_seed(0)
        run = dataclasses.replace(cfg, grounding_loss_weights=weights, grounding_min_side=16)
        return float(diffusion_loss(unet, noise_schedule(), images, embeds, mask, None, run, grounding=targets))

    torch.manual_seed(0)
    ungrounded = float(diffusion_loss(unet, noise_schedule(), images, embeds, mask, None, cfg))
    assert loss([0.0, 0.0]) == pytest.approx(ungrounded, rel=1e-6)
    assert loss([1.0, 0.0]) > ungrounded + 0.1 and loss([1.0, 1.0]) > loss([1.0, 0.0])
