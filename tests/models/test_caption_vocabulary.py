"""The caption vocabulary: the forms people type reach the model as the names it was trained on."""
import os

import pytest
import torch

from imagen_app.models.caption_vocabulary import CaptionVocabulary, fold

from conftest import WEIGHTS

SHIPPED = WEIGHTS  # only its text files (captions.txt, held_out.txt, aliases.txt) are read here, not the model
NAMES = ["flag: japan", "flag: côte d’ivoire", "flag: st. kitts & nevis", "flag: myanmar (burma)", "flag: turkey",
         "turkey", "keycap: #", "keycap: *", "family: man, woman, boy", "woman firefighter: dark skin tone", "red heart"]


def test_fold_drops_punctuation_accents_and_reads_ampersand_as_and():
    assert fold("Côte d’Ivoire") == fold("cote divoire") == "cote divoire"
    assert fold("flag: St. Kitts & Nevis") == "flag st kitts and nevis"
    assert fold("family: man, woman, boy") == "family man woman boy"


@pytest.mark.parametrize("typed, known", [
    ("japan", "flag: japan"), ("Japan", "flag: japan"), ("japan flag", "flag: japan"), ("flag of Japan", "flag: japan"),
    ("cote d'ivoire", "flag: côte d’ivoire"), ("Saint Kitts", "saint kitts"),  # not a known form: unchanged
    ("st kitts and nevis", "flag: st. kitts & nevis"), ("myanmar", "flag: myanmar (burma)"),
    ("turkey", "turkey"),  # another emoji's own name is not read as a country
    ("family man woman boy", "family: man, woman, boy"), ("Woman firefighter dark skin tone", "woman firefighter: dark skin tone"),
    ("keycap", "keycap"),  # two known names fold to it: left as typed
    ("purple heart", "purple heart"),  # not a known name: composition is left to the model
    ("a red heart", "red heart"), ("The Red Heart!", "red heart"), ("some turkey", "turkey"), ("an japan", "flag: japan"),
    ("a purple heart", "purple heart"),  # no known name after the article: left to the model, the article read away
    ("A plane!", "plane!"), ("some bananas", "some bananas"), ("the cat and a dog", "cat and a dog"),
    ("the", "the"), ("a  red heart", "red heart"),
    ("Japan flag!", "flag: japan"), ("the Japanese flag!", "flag: japanese!"),  # a closing mark does not hide a flag
    ("The Mexican flag?", "flag: mexican?"), ("white flag!", "white flag!"),
    ("a cat and the japanese flag", "cat and the japanese flag"),  # a sentence that ends in a flag stays a sentence
    ("a picture of music, and the Japanese flag!", "picture of music, and the japanese flag!"),
    # an article after a frame is read away ("a" and "the" are caption words: "a button (blood type)")
    ("a picture of a tree", "picture of tree"), ("An icon of an owl!", "icon of owl!"), ("draw me a cat", "draw me cat"),
    ("show me the moon", "show me moon"), ("a photo of the red heart", "photo of red heart"),
    ("sign of the horns", "sign of the horns"), ("a picture of a cat and a dog", "picture of cat and a dog"),
])
def test_typed_forms_become_the_known_name(typed, known):
    assert CaptionVocabulary(NAMES).canonical(typed) == known


def test_a_name_that_starts_with_an_article_matches_whole_first():
    vocabulary = CaptionVocabulary(["a button (blood type)", "button", "the horns"])
    assert vocabulary.canonical("a button blood type") == "a button (blood type)"
    assert vocabulary.canonical("a button") == "button"
    assert vocabulary.canonical("The Horns") == "the horns"
    assert vocabulary.canonical("a picture of a button (blood type)") == "picture of a button (blood type)"
    assert vocabulary.canonical("a picture of a button") == "picture of button"


def test_every_shipped_name_maps_to_itself_so_training_captions_are_unchanged():
    vocab = CaptionVocabulary.from_folder(SHIPPED)
    assert vocab is not None and len(vocab) > 3900
    assert all(vocab.canonical(name) == name for name in vocab.names)
    assert vocab.canonical("japan") == "flag: japan" and vocab.canonical("germany") == "flag: germany"


def test_the_pipeline_encodes_a_typed_name_as_the_known_name_and_saves_its_vocabulary(tmp_path):
    from imagen_app import ImagenPipeline
    from imagen_app.training.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    plain = pipe.prompt_encoder.encode(["japan"])[0]
    pipe.vocabulary = CaptionVocabulary(["flag: japan", "red heart"])
    encoder = pipe.prompt_encoder  # a new encoder for the new vocabulary
    typed, canonical = encoder.encode(["japan"])[0], encoder.encode(["flag: japan"])[0]
    assert torch.equal(typed, canonical) and not torch.equal(plain, canonical[:, : plain.shape[1]])
    assert pipe.check_prompt("Japan flag").prompt == "flag: japan"  # what the "understood" box shows

    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "captions.txt").read_text().split("\n")[:2] == ["flag: japan", "red heart"]
    loaded = ImagenPipeline.from_pretrained(tmp_path)
    assert loaded.vocabulary.names == ["flag: japan", "red heart"]
    assert loaded.check_prompt("japan").prompt == "flag: japan"


def test_an_alias_becomes_its_name_unless_it_is_a_known_name_or_a_country():
    names = NAMES + ["sunglasses", "smiling face with sunglasses", "heart with arrow", "kitchen knife", "hocho x"]
    aliases = {"cupid": "heart with arrow", "sunglasses": "smiling face with sunglasses", "japan": "red heart",
               "knife": "kitchen knife", "hocho": "kitchen knife", "unknown": "not a known name"}
    vocab = CaptionVocabulary(names, aliases=aliases)
    assert vocab.canonical(":Cupid:") == "heart with arrow" and vocab.canonical("knife") == "kitchen knife"
    assert vocab.canonical("sunglasses") == "sunglasses"  # the sunglasses emoji's own name wins
    assert vocab.canonical("japan") == "flag: japan"  # a country wins over an alias
    assert vocab.canonical("unknown") == "unknown"  # an alias of a name not in the list is ignored


def test_the_shipped_aliases_load_and_round_trip(tmp_path):
    vocab = CaptionVocabulary.from_folder(SHIPPED)
    assert len(vocab.aliases) > 1000 and vocab.canonical("cupid") == "heart with arrow"
    vocab.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"captions.txt", "held_out.txt", "aliases.txt"}
    again = CaptionVocabulary.from_folder(tmp_path)
    assert again.names == vocab.names and again.aliases == vocab.aliases
    assert (tmp_path / "captions.txt").read_text() == open(os.path.join(SHIPPED, "captions.txt")).read()


def test_training_reads_captions_as_the_page_does():
    """The training's vocabulary (training/data.py) keeps every emoji name as it is and reads a caption that is no
    name as the shipped pipeline does (a scene: its leading article away)."""
    from imagen_app.training.data import caption_vocabulary

    training, page = caption_vocabulary(), CaptionVocabulary.from_folder(SHIPPED)
    assert all(training.canonical(name) == name for name in page.names)
    for typed in ["a cat and a pizza", "three foxes", "The Japanese flag", "an astronaut", "kitty", "a red car"]:
        assert training.canonical(typed) == page.canonical(typed), typed
