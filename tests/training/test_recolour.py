"""Recoloured emoji: a palette colour's pixels (and their anti-aliased mixes) take another colour, the rest
stays; the synthetic captions never name a real emoji, so no held-out composition is made."""
import numpy as np

from imagen_app.training.data import CaptionedImages, Emoji
from imagen_app.training.recolour import main_colour, names_inside, palette, recolour, recoloured_emoji

from conftest import BLUE, GREEN, PURPLE, RED, YELLOW, filled

def test_recolour_moves_the_fill_and_its_mixes_and_keeps_outline_and_background():
    image = filled(RED)
    out = recolour(image, RED.astype(np.float32), PURPLE.astype(np.float32))
    assert (out[2:-2, 2:-2] == PURPLE).all()
    assert (out[1, 1:-1] == 0).all() and (out[-1] == 255).all()  # outline, background
    np.testing.assert_allclose(out[0, 0], (PURPLE + 255) / 2, atol=1.5)  # the edge mixes the new colour
    other = filled(GREEN)
    assert (recolour(other, RED.astype(np.float32), PURPLE.astype(np.float32)) == other).all()  # not its colour


def test_main_colour_needs_the_colour_to_fill_the_emoji():
    colours = {"red": RED.astype(np.float32), "green": GREEN.astype(np.float32)}
    assert main_colour(filled(RED), colours) == "red"
    assert main_colour(filled([40, 90, 200]), colours) is None  # a colour not in the palette
    assert main_colour(np.full((8, 8, 3), 255, np.uint8), colours) is None  # blank


def corpus():
    names = ["red circle", "purple square", "green circle", "yellow circle", "blue circle",  # the palette's sources
             "balloon", "green book", "blue book", "anatomical heart", "grinning face", "red heart"]
    colours = [RED, PURPLE, GREEN, YELLOW, BLUE, RED, GREEN, BLUE, RED, YELLOW, RED]
    emojis = [Emoji(code=f"{i:04X}", caption=n) for i, n in enumerate(names)]
    return emojis, np.stack([filled(c) for c in colours])


def test_recoloured_emoji_makes_new_names_only():
    emojis, images = corpus()
    held = ["red heart", "purple circle"]
    assert set(palette(emojis, images, held)) == {"red", "purple", "green", "yellow", "blue"}
    data = recoloured_emoji(emojis, images, held)
    captions = [c[0] for c in data.captions]
    real = {e.caption for e in emojis}
    assert not set(captions) & (real | set(held)) and len(set(captions)) == len(captions)
    # the balloon in every other palette colour; a colour-first name gets its colour word replaced
    assert {c for c in captions if c.endswith("balloon")} == {f"{c} balloon" for c in ["purple", "green", "yellow", "blue"]}
    assert "purple book" in captions and "green book" not in captions and "blue book" not in captions
    # names with a shape or colour word in them are not recoloured, nor yellow (skin and face) emoji
    assert not any("heart" in c or "circle" in c or "square" in c or "grinning" in c for c in captions)
    assert data.families == ["recoloured"] * len(captions) and len(data.images) == len(captions)
    i = captions.index("purple balloon")
    assert (data.images[i][2:-2, 2:-2] == PURPLE).all()


def test_names_inside_lists_the_single_emoji_a_recoloured_name_contains():
    recoloured = CaptionedImages(np.zeros((3, 4, 4, 3), np.uint8),
                                 [["purple kiss mark"], ["blue lady beetle"], ["green star"]], ["recoloured"] * 3)
    names = ["kiss", "kiss mark", "beetle", "lady", "star", "mark twain", "flag: japan", "beetles"]
    emojis = [Emoji(code=f"{i:04X}", caption=n) for i, n in enumerate(names)]
    # a whole name inside another name; not the recoloured emoji's own name ("kiss mark", "star"), not a part
    # of a word ("beetles"), nor a name that only shares a word ("mark twain")
    assert names_inside(recoloured, emojis) == ["beetle", "kiss", "lady"]
