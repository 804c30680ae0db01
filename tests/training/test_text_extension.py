"""New words for the frozen text encoder leave every old caption's embedding exactly as it was."""
import torch

from imagen_app.models.text_encoder import PromptEncoder, load_text_encoder
from imagen_app.training.text_extension import extend_text_encoder


def test_extension_keeps_old_embeddings_and_starts_plurals_at_their_singular(tmp_path, tiny_pipe):
    src, out = tmp_path / "src", tmp_path / "out"
    tiny_pipe.tokenizer.save_pretrained(src / "tokenizer")
    tiny_pipe.text_encoder.save_pretrained(src / "text_encoder")
    known = tiny_pipe.tokenizer.get_vocab()
    assert "heart" in known and "hearts" not in known and "above" not in known
    new = extend_text_encoder(str(src), str(out), ["two hearts above a panda", "3 hearts"], {"hearts": "heart"})
    assert {"hearts", "above", "3"} <= set(new) and not set(new) & set(known)
    old = PromptEncoder(*load_text_encoder(str(src)))
    ext = PromptEncoder(*load_text_encoder(str(out)))
    captions = ["red heart", "panda", "red heart panda"]
    (e0, m0), (e1, m1) = old.encode(captions), ext.encode(captions)
    assert torch.equal(e0, e1) and torch.equal(m0, m1)
    vocab = ext.tokenizer.get_vocab()
    assert min(vocab[w] for w in new) >= len(old.tokenizer.get_vocab())
    table = ext.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[vocab["hearts"]], table[vocab["heart"]])
    assert "<unk>" not in ext.tokenizer.tokenize("two hearts above a panda")
    assert "<unk>" in old.tokenizer.tokenize("two hearts above a panda")


def test_a_phrase_reads_as_one_word_of_its_own(tmp_path, tiny_pipe):
    """"picture of" becomes the one new word "picture_of" in any case and spacing, and survives a save; every caption
    and a word that merely starts alike ("pictures often") tokenize as before."""
    from transformers import AutoTokenizer

    from imagen_app.training.text_extension import extended_tokenizer
    from imagen_app.training.tiny import TINY_CAPTIONS

    old = tiny_pipe.tokenizer
    new = extended_tokenizer(old, ["picture", "cat", "a", "!"], ["picture of"])
    new.save_pretrained(str(tmp_path / "tok"))
    new = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert new.tokenize("A  Picture   of a cat!") == ["a", "picture_of", "a", "cat", "!"]
    assert new.tokenize("pictures often") == ["<unk>", "<unk>"]  # two words, unknown as before
    assert new.convert_tokens_to_ids("picture_of") == len(old) + 4
    for caption in TINY_CAPTIONS:
        assert new(caption).input_ids == old(caption).input_ids


def test_first_phrases_are_read_before_the_word_rules_of_an_earlier_extension(tiny_pipe):
    """A tokenizer extended once reads "can" as two rows; extended again, "can of" as a first phrase is one word
    before the rows rule sees "can", where as an ordinary phrase (appended after it) it is never matched; a fresh
    tokenizer takes first phrases as phrases."""
    from imagen_app.training.text_extension import extended_tokenizer

    once = extended_tokenizer(tiny_pipe.tokenizer, ["can", "soda", "of"], rows={"can": 2})
    assert once.tokenize("can of soda") == ["can", "can_2", "of", "soda"]
    first = extended_tokenizer(once, [], first_phrases=["can of"])
    assert first.tokenize("Can  of soda") == ["can_of", "soda"] and first.tokenize("can soda") == ["can", "can_2", "soda"]
    assert extended_tokenizer(once, [], ["can of"]).tokenize("can of soda") == ["can", "can_2", "of", "soda"]
    fresh = extended_tokenizer(tiny_pipe.tokenizer, ["soda"], first_phrases=["can of"])
    assert fresh.tokenize("can of soda") == ["can_of", "soda"]
    for caption in ("red heart", "panda"):
        assert first(caption).input_ids == tiny_pipe.tokenizer(caption).input_ids


def test_a_flag_adjective_is_its_own_word_only_where_it_ends_a_flag_and_every_caption_tokenizes_as_before():
    """The shipped tokenizer with a word per country adjective of the shipped keyword table: "flag: japanese" reads
    "japanese_flag", and every caption of the corpus ("flag: american samoa", "japanese castle") reads as before."""
    from transformers import AutoTokenizer

    from conftest import WEIGHTS
    from imagen_app.training.data import load_emoji
    from imagen_app.training.keywords import flag_adjectives, read_table
    from imagen_app.training.text_extension import extended_tokenizer

    old = AutoTokenizer.from_pretrained(f"{WEIGHTS}/tokenizer")
    adjectives = flag_adjectives(read_table(f"{WEIGHTS}/keywords.txt"))
    assert {"japanese", "american", "mexican", "indian"} <= set(adjectives)
    new = extended_tokenizer(old, [], [], adjectives)
    assert new.tokenize("flag: japanese") == ["flag", ":", "japanese_flag"]
    # (the shipped tokenizer reads the flag word of a country of two words as two rows)
    assert new.tokenize("flag: american!") == ["flag", ":", "american_flag", "american_flag_2", "!"]
    # a caption's word alone is a word of its own; in its caption, as it was
    assert new.tokenize("a money emoji")[1] == "money_alone" and new.tokenize("money bag") == ["money", "bag"]
    assert new.tokenize("flag: american samoa") == old.tokenize("flag: american samoa")
    captions = [e.caption for e in load_emoji()]
    assert [new(c).input_ids for c in captions] == [old(c).input_ids for c in captions]


def test_a_word_of_several_rows_reads_as_that_many_words(tiny_pipe):
    from imagen_app.training.text_extension import extended_tokenizer
    from imagen_app.training.tiny import TINY_CAPTIONS

    old = tiny_pipe.tokenizer
    new = extended_tokenizer(old, ["music", "musical", "kitty"], rows={"music": 3, "kitty": 1})
    assert new.tokenize("Music") == ["music", "music_2", "music_3"]
    assert new.tokenize("musical kitty") == ["musical", "kitty"]  # another word, and a word of one row
    assert len(new) == len(old) + 5
    for caption in TINY_CAPTIONS:
        assert new(caption).input_ids == old(caption).input_ids


def test_teaching_a_taught_encoder_again_adds_no_rows(tmp_path):
    """tune-text on a pipeline whose encoder already has the frame phrases: one row per token, as before."""
    import shutil

    from imagen_app.training.text_tuning import TextTuning, TextTuningConfig, tune_text
    from imagen_app.training.tiny import tiny_pipeline

    folder = tmp_path / "pipe"
    tiny_pipeline(resolutions=(32,)).save_pretrained(str(folder))
    (folder / "keywords.txt").write_text("kitten\tcat face\n")
    cfg = TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run"), out=str(tmp_path / "export"),
                           steps=1, batch_size=4, threads=1)
    tune_text(cfg, log=lambda *_: None)
    for part in ("tokenizer", "text_encoder"):
        shutil.rmtree(folder / part)
        shutil.copytree(tmp_path / "export" / part, folder / part)
    again = TextTuning(TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "again")), log=lambda *_: None)
    assert len(again.tokenizer) == len(again.tokenizer0)
    assert again.encoder.get_input_embeddings().weight.shape[0] == len(again.tokenizer)


def test_a_caption_word_standing_alone_is_a_word_of_its_own(tiny_pipe):
    """"heart" alone ("a heart", "heart emoji please!", "a picture of the heart") reads as `heart_alone` (here of two
    rows); inside a caption ("red heart"), or with a word that is no frame's ("broken heart"), as before."""
    from imagen_app.training.phrasing import alone_context
    from imagen_app.training.text_extension import extended_tokenizer
    from imagen_app.training.tiny import TINY_CAPTIONS

    old = tiny_pipe.tokenizer
    new = extended_tokenizer(old, ["emoji", "please", "broken", "hearts", "!", "the"], ["picture of"], rows={"heart_alone": 2},
                             alone=["heart"], alone_context=alone_context())
    alone = ["heart_alone", "heart_alone_2"]
    assert new.tokenize("heart") == alone and new.tokenize("Heart!") == alone + ["!"]
    assert new.tokenize("heart emoji please!") == alone + ["emoji", "please", "!"]
    assert new.tokenize("picture of the heart") == ["picture_of", "the"] + alone
    assert new.tokenize("broken heart") == ["broken", "heart"] and new.tokenize("hearts") == ["hearts"]
    for caption in TINY_CAPTIONS:
        assert new(caption).input_ids == old(caption).input_ids


def test_an_alone_word_may_stand_before_its_names_head(tiny_pipe):
    """"heart" stands for a name ending in "face" (`alone_heads`): "a heart face" reads as `heart_alone` and "face"
    (as "a sad face" reads as "sad but relieved face" and "face"); the two inside a longer prompt, or a word after
    them, read as before."""
    from imagen_app.training.phrasing import alone_context
    from imagen_app.training.text_extension import extended_tokenizer
    from imagen_app.training.tiny import TINY_CAPTIONS

    old = tiny_pipe.tokenizer
    new = extended_tokenizer(old, ["face", "the", "happy", "!"], ["picture of"], rows={"heart_alone": 2}, alone=["heart"],
                             alone_context=alone_context(), alone_heads={"heart": "face"})
    alone = ["heart_alone", "heart_alone_2"]
    assert new.tokenize("heart face") == alone + ["face"] and new.tokenize("picture of the heart face!") == [
        "picture_of", "the"] + alone + ["face", "!"]
    assert new.tokenize("heart") == alone
    assert new.tokenize("happy heart face") == ["happy", "heart", "face"]
    assert new.tokenize("heart face happy") == ["heart", "face", "happy"]
    for caption in TINY_CAPTIONS:
        assert new(caption).input_ids == old(caption).input_ids


def test_an_alone_word_before_a_partner_reads_alone_and_captions_stay(tiny_pipe):
    """`alone_partners`: "heart" before "cat" or "of cat" reads as `heart_alone` ("a sad cat", "a cup of tea"); before
    any other word, and inside every caption, as before. Given again, on the tokenizer that has the rule (here one
    whose alone words came from an earlier call), nothing is added."""
    import json

    from imagen_app.training.phrasing import alone_context
    from imagen_app.training.text_extension import extended_tokenizer
    from imagen_app.training.tiny import TINY_CAPTIONS

    old = tiny_pipe.tokenizer
    alone = ["heart_alone", "heart_alone_2"]
    first = extended_tokenizer(old, ["cat", "of", "the", "!"], [], rows={"heart_alone": 2}, alone=["heart"],
                               alone_context=alone_context(), alone_partners={"heart": ["cat"]})
    assert first.tokenize("heart cat") == alone + ["cat"] and first.tokenize("the heart of cat!") == ["the"] + alone + [
        "of", "cat", "!"]
    assert first.tokenize("heart") == alone and first.tokenize("red heart cat") == ["red"] + alone + ["cat"]
    assert first.tokenize("heart catalog")[0] == "heart" and first.tokenize("heart panda") == ["heart", "panda"]
    # a tokenizer with alone words already (an earlier run): the rule goes before its marks are read
    earlier = extended_tokenizer(old, ["cat", "of", "the", "!"], [], rows={"heart_alone": 2}, alone=["heart"],
                                 alone_context=alone_context())
    assert earlier.tokenize("heart cat") == ["heart", "cat"]
    later = extended_tokenizer(earlier, [], alone_partners={"heart": ["cat"]})
    assert later.tokenize("heart cat") == alone + ["cat"] and later.tokenize("heart") == alone
    again = extended_tokenizer(later, [], alone_partners={"heart": ["cat"]})
    assert again.backend_tokenizer.to_str() == later.backend_tokenizer.to_str()
    rules = json.dumps(json.loads(later.backend_tokenizer.to_str())["normalizer"])
    assert rules.count("(?=heart (?:of )?(?:cat)") == 1
    for tokenizer in (first, later):
        for caption in TINY_CAPTIONS:
            assert tokenizer(caption).input_ids == old(caption).input_ids
