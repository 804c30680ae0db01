import json
import os

import numpy as np
import pytest

from imagen_app.training import data

from conftest import WEIGHTS


def test_cldr_captions():
    assert data.cldr_caption(":woman_firefighter_dark_skin_tone:", "1F469-1F3FF-200D-1F692") == "woman firefighter: dark skin tone"
    assert data.cldr_caption(":Japan:", "1F1EF-1F1F5") == "flag: Japan"
    assert data.cldr_caption(":red_heart:", "2764-FE0F") == "red heart"
    assert data.cldr_caption(":kiss_person_person_medium-light_skin_tone_medium_skin_tone:", "1F9D1") == \
        "kiss person person: medium-light skin tone, medium skin tone"


@pytest.fixture(scope="module")
def emojis():
    return data.load_emoji()


def test_corpus_has_cldr_names(emojis):
    captions = {e.caption for e in emojis}
    assert len(emojis) > 3900
    assert {"red heart", "flag: japan", "panda", "woman firefighter: dark skin tone"} <= captions


def test_held_out_split_is_deterministic_and_keeps_parts_seen(emojis):
    held = data.held_out_split(emojis)
    assert held == data.held_out_split(sorted(emojis, key=lambda e: e.code))  # the same split from the same corpus
    with open(os.path.join(WEIGHTS, "held_out.txt")) as f:  # a small text file of weights/, not the model
        shipped = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert set(held) == set(shipped)  # the shipped model's held-out list is this split
    assert 100 < len(held) < 400
    train = {e.caption for e in emojis} - set(held)
    for c in held:
        e = data.Emoji("", c)
        if e.skin_tone and c.count("skin tone") == 1:
            base = c.split(":")[0]
            assert sum(f"{base}: {t} skin tone" in train for t in data.SKIN_TONES) >= 3, c
        elif e.colour:
            assert any(f"{e.colour} {s}" in train for s in data.SHAPES), c
    kinds = {("tone" if data.Emoji("", c).skin_tone else "colour" if data.Emoji("", c).colour else "gender") for c in held}
    assert kinds == {"tone", "colour", "gender"}


def test_render_is_not_blank(emojis):
    img = data.render(next(e.code for e in emojis if e.caption == "red heart"), 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    red = (img[..., 0] > 150) & (img[..., 1] < 100)
    assert red.sum() > 50  # a red heart on white
    assert (img == 255).all(axis=-1).sum() > 100  # white background


def test_image_folder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    captions = [["red heart", "an emoji of red heart"], ["panda"], ["flag: japan", "japan flag"]]
    n = data.write_image_folder(data.CaptionedImages(images, captions), str(tmp_path / "folder"))
    back = data.image_folder_dataset(str(tmp_path / "folder"), 8)
    assert n == 3 and np.array_equal(back.images, images) and back.captions == captions
    assert back.families is None  # none were written


def test_image_folder_keeps_families_and_first_caption(tmp_path):
    """An exported emoji corpus keeps its families (the curriculum needs them) and, with
    all_captions=False, trains on the CLDR name alone (caption_variants: false)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    captions = [["red heart", "an emoji of red heart"], ["panda", "panda emoji"], ["flag: japan", "japan flag"]]
    families = ["single emoji", "single emoji", "flags"]
    data.write_image_folder(data.CaptionedImages(images, captions, families), str(tmp_path / "folder"))
    back = data.image_folder_dataset(str(tmp_path / "folder"), 8)
    assert back.families == families and back.captions == captions
    first = data.image_folder_dataset(str(tmp_path / "folder"), 8, all_captions=False)
    assert first.captions == [["red heart"], ["panda"], ["flag: japan"]] and first.families == families


def test_repacked_folder_reads_back_the_same_rows_pixel_for_pixel_in_smaller_pngs(tmp_path):
    """repack-dataset (the device's copy of an emoji folder): each PNG in its smallest lossless form, palette or grey
    where the image allows, and image_folder_dataset reads the very arrays, captions and families it read before."""
    from PIL import Image

    rng = np.random.default_rng(0)
    few = rng.choice(np.array([[255, 255, 255], [200, 30, 40], [0, 0, 0], [12, 200, 99]], np.uint8), size=(2, 16, 16))
    grey = np.repeat(rng.integers(0, 256, size=(1, 16, 16, 1), dtype=np.uint8), 3, axis=-1)
    many = rng.integers(0, 256, size=(1, 16, 16, 3), dtype=np.uint8)  # 256 colours at most fit no palette
    images = np.concatenate([few, grey, many])
    captions = [["red heart", "an emoji of red heart"], ["panda"], ["flag: japan"], ["a cat and a dog"]]
    families = ["single emoji", "single emoji", "flags", "scenes: two objects"]
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i, image in enumerate(images):  # as the exporter wrote them before: RGB at PIL's default level
        Image.fromarray(image).save(src / f"{i:05d}.png")
    (src / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"{i:05d}.png", "text": c, "family": f}) + "\n"
        for i, (caps, f) in enumerate(zip(captions, families)) for c in caps))
    sizes = data.repack_image_folder(str(src), str(out))
    before, after = data.image_folder_dataset(str(src), 16), data.image_folder_dataset(str(out), 16)
    assert np.array_equal(after.images, images) and np.array_equal(before.images, after.images)
    assert after.captions == before.captions == captions and after.families == before.families == families
    assert (out / "metadata.jsonl").read_bytes() == (src / "metadata.jsonl").read_bytes()
    assert [Image.open(out / f"{i:05d}.png").mode for i in range(4)] == ["P", "P", "L", "RGB"]
    assert sizes["after"] < sizes["before"] == sum(os.path.getsize(src / f"{i:05d}.png") for i in range(4))
    for i, image in enumerate(images):  # and write_image_folder writes the same smallest files
        assert data.smallest_png(image) == (out / f"{i:05d}.png").read_bytes()
