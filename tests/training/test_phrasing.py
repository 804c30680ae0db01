"""The forms people type: the keyword table (CLDR + WordNet), the typed-form sampler, and the text tuning run."""
import math
import os
import random
import re

import pytest
import torch

from conftest import WEIGHTS
from imagen_app.training.keywords import (MEANT, STRONG, WordNet, build_meanings, build_table, flag_adjectives, plural,
                                         read_meanings, read_table, write_meanings)
from imagen_app.training.phrasing import PhrasingSampler, typed_form


def write_wordnet(folder):
    """A four-synset WordNet in the database format: cat (sense 1: cat, true_cat), bicycle (bike), Japan, and the
    adjective Japanese that pertains to it; mice as the irregular plural of mouse."""
    os.makedirs(folder, exist_ok=True)
    nouns = {"02121620": "02121620 05 n 02 cat 0 true_cat 0 000 | feline",
             "02834778": "02834778 06 n 02 bicycle 0 bike 0 000 | wheeled vehicle",
             "08921850": "08921850 15 n 02 Japan 0 Nippon 0 000 | a country",
             "08500000": "08500000 15 n 03 America 0 United_States 0 USA 0 000 | a country",
             "07881800": "07881800 13 n 02 beverage 0 drink 0 000 | a liquid to drink",
             "08700000": "08700000 15 n 02 Taiwan 0 Republic_of_China 0 000 | an island",
             "08710000": "08710000 15 n 02 China 0 PRC 0 000 | a country",
             "08860123": "08860123 15 n 03 United_Kingdom 0 Britain 0 Great_Britain 0 000 | a country",
             "08858942": "08858942 17 n 02 Great_Britain 0 GB 0 000 | an island",
             "07950000": "07950000 05 n 02 man 0 humankind 0 000 | all of the living human inhabitants",
             "09315000": "09315000 15 n 02 Isle_of_Man 0 Man 0 000 | an island",
             "08870000": "08870000 15 n 01 England 0 000 | a division of the United Kingdom"}
    with open(os.path.join(folder, "data.noun"), "w") as f:
        f.write("  1 license header\n" + "\n".join(nouns.values()) + "\n")
    with open(os.path.join(folder, "index.noun"), "w") as f:
        f.write("  1 license header\n")
        f.write("beverage n 1 0 1 0 07881800\nbicycle n 1 0 1 0 02834778\ncat n 1 0 1 0 02121620\n"
                "japan n 1 0 1 0 08921850\ngreat_britain n 2 0 2 0 08860123 08858942\n"
                "man n 2 0 2 0 07950000 09315000\n")
    with open(os.path.join(folder, "noun.exc"), "w") as f:
        f.write("mice mouse\n")
    with open(os.path.join(folder, "data.adj"), "w") as f:
        f.write("  1 license header\n")
        f.write("02965044 01 a 02 Japanese 0 Nipponese 0 001 \\ 08921850 n 0101 | of Japan\n")
        f.write("02927512 01 a 01 American 0 001 \\ 08500000 n 0101 | of America\n")
        # Chinese pertains to both China synsets; Taiwan's comes first in the file
        f.write("02960000 01 a 01 Chinese 0 002 \\ 08700000 n 0101 \\ 08710000 n 0101 | of China\n")
        # British pertains to the island, whose name is also one of the UK's; anthropic to humankind ("man", which is
        # also a name of the Isle of Man, one that "anthropic" does not start as); English to England
        f.write("02970000 01 a 01 British 0 001 \\ 08858942 n 0101 | of Great Britain\n")
        f.write("02980000 01 a 01 anthropic 0 001 \\ 07950000 n 0101 | of humankind\n")
        f.write("02990000 01 a 01 English 0 001 \\ 08870000 n 0101 | of England\n")


def test_keyword_table_from_cldr_and_wordnet(tmp_path):
    write_wordnet(tmp_path / "wn")
    wordnet = WordNet(str(tmp_path / "wn"))
    names = {"🐱": "cat face", "🐈": "cat", "🚲": "bicycle", "🐭": "mouse face", "🇯🇵": "flag: japan",
             "🇺🇸": "flag: united states", "😀": "grinning face", "😃": "grinning face with big eyes", "☕": "hot beverage",
             "🇹🇼": "flag: taiwan", "🇨🇳": "flag: china", "🇬🇧": "flag: united kingdom", "🇮🇲": "flag: isle of man",
             "\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F": "england"}
    cldr = {"🐱": ["cat", "kitten", "face"], "😀": ["face", "happy"], "😃": ["face", "happy"], "🐭": ["mouse"]}
    table = build_table(names, cldr, wordnet)
    assert table["kitten"] == {"cat face"} and table["kittens"] == {"cat face"}
    assert table["true cat"] == {"cat"}  # WordNet's first sense of the name
    assert table["hot drink"] == {"hot beverage"}  # ... or of the name's head noun
    assert table["bike"] == {"bicycle"} and table["bikes"] == {"bicycle"}
    assert table["mice"] == {"mouse face"}  # the irregular plural of the keyword
    assert table["face"] == {"cat face", "grinning face", "grinning face with big eyes"}  # a keyword names them all
    assert table["japanese flag"] == {"flag: japan"}
    assert table["american flag"] == {"flag: united states"}  # through another name of the country's synset
    assert table["chinese flag"] == {"flag: china"}  # of its countries, the one whose name it starts as
    assert table["british flag"] == {"flag: united kingdom"}  # the island's name is also the UK's ("britain")
    assert "anthropic flag" not in table  # "man" is also the Isle of Man's name, but not one it starts as
    assert table["english flag"] == {"england"}  # a subdivision's flag, named without "flag: "
    lists = {typed: sorted(names) for typed, names in table.items()}
    assert "british" in flag_adjectives(lists) and "english" not in flag_adjectives(lists)
    assert "english" in flag_adjectives(lists, flag_names=["england"])
    assert "cat face" not in table  # a name is not its own keyword


def write_wordnet_tree(folder):
    """A small noun hierarchy: entity > organism > person > adult > worker, professional > doctor; organism >
    animal > mammal > rabbit > young rabbit; entity > artifact > phone, pill, coat; the bunny's first sense a person (a bunny girl), its second the
    young rabbit; the cell's first a unit of life, its second the mobile phone."""
    os.makedirs(folder, exist_ok=True)
    synsets = [("00000001", ["entity"], []), ("00000002", ["person", "people"], ["00000017"]),
               ("00000003", ["worker"], ["00000019"]), ("00000004", ["professional"], ["00000019"]),
               ("00000005", ["doctor", "physician"], ["00000004"]), ("00000006", ["animal"], ["00000017"]),
               ("00000007", ["rabbit"], ["00000018"]), ("00000008", ["bunny", "bunny_rabbit"], ["00000007"]),
               ("00000009", ["bunny", "bunny_girl"], ["00000002"]), ("00000010", ["artifact"], ["00000001"]),
               ("00000011", ["mobile_phone", "cell", "cellphone"], ["00000010"]), ("00000012", ["pill"], ["00000010"]),
               ("00000013", ["coat"], ["00000010"]), ("00000014", ["cell"], ["00000001"]),
               ("00000015", ["bar"], ["00000010"]), ("00000016", ["ear"], ["00000006"]),
               ("00000017", ["organism"], ["00000001"]), ("00000018", ["mammal"], ["00000006"]),
               ("00000019", ["adult"], ["00000002"])]
    with open(os.path.join(folder, "data.noun"), "w") as f:
        f.write("  1 license header\n")
        for offset, lemmas, parents in synsets:
            pointers = " ".join(f"@ {p} n 0000" for p in parents)
            f.write(f"{offset} 03 n {len(lemmas):02x} " + " ".join(f"{w} 0" for w in lemmas)
                    + f" {len(parents):03d} {pointers} | gloss\n")
    senses = {}
    for offset, lemmas, _ in synsets:
        for w in lemmas:
            senses.setdefault(w.lower(), []).append(offset)
    senses["bunny"] = ["00000009", "00000008"]  # the bunny girl is the first sense
    senses["cell"] = ["00000014", "00000011"]
    with open(os.path.join(folder, "index.noun"), "w") as f:
        f.write("  1 license header\n")
        for w, offsets in sorted(senses.items()):
            f.write(f"{w} n {len(offsets)} 0 {len(offsets)} 0 " + " ".join(offsets) + "\n")
    with open(os.path.join(folder, "noun.exc"), "w") as f:
        f.write("")


def test_keyword_meanings_from_wordnet(tmp_path):
    """Of a keyword's emoji, the ones it means: a sense that has the name as a lemma ("cell": its second sense is
    the mobile phone), else the most similar head noun ("doctor": the worker, a person like it, not the pill; "bunny":
    a kind of rabbit, not the people with bunny ears). Written beside the table and read back."""
    write_wordnet_tree(tmp_path / "wn")
    wordnet = WordNet(str(tmp_path / "wn"))
    assert wordnet.meaning_score("cell", "mobile phone") == 1.0 and wordnet.meaning_score("cell", "antenna bars") < MEANT
    assert wordnet.meaning_score("bunny", "rabbit face") >= STRONG  # the animal faces are their animal
    assert wordnet.meaning_score("bunny", "people with bunny ears") < wordnet.meaning_score("bunny", "rabbit")
    assert wordnet.meaning_score("doctor", "health worker") > wordnet.meaning_score("doctor", "pill")
    assert wordnet.meaning_score("bunnies", "rabbit") == wordnet.meaning_score("bunny", "rabbit")  # a plural's singular
    table = {"cell": {"antenna bars", "mobile phone"}, "bunny": {"people with bunny ears", "rabbit", "rabbit face"},
             "doctor": {"health worker", "pill", "lab coat"}, "coat": {"lab coat"}, "thing": {"pill", "rabbit"}}
    meanings = build_meanings(table, wordnet)
    assert meanings["cell"] == (["mobile phone"], 1.0)
    assert meanings["bunny"][0] == ["rabbit", "rabbit face"] and meanings["doctor"][0] == ["health worker"]
    assert "coat" not in meanings  # one emoji: nothing to choose
    assert "thing" not in meanings  # nothing similar enough
    write_meanings(meanings, str(tmp_path / "meanings.txt"))
    assert read_meanings(str(tmp_path / "meanings.txt")) == meanings
    assert read_meanings(str(tmp_path / "missing.txt")) == {}


def test_plural():
    assert [plural(w) for w in ["fox", "cherry", "red apple", "bus", "key", "dish"]] == \
           ["foxes", "cherries", "red apples", "buses", "keys", "dishes"]
    assert plural("mouse", {"mouse": "mice"}) == "mice"


def test_shipped_keyword_table_targets_no_held_out_or_toned_emoji():
    from imagen_app.training.data import held_out_split, load_emoji

    table = read_table(os.path.join(WEIGHTS, "keywords.txt"))
    targets = {n for names in table.values() for n in names}
    held = set(held_out_split(load_emoji()))
    assert not targets & held
    assert not [n for n in targets if "skin tone" in n]
    assert "cat face" in table["kitty"] and table["coffee"] == ["hot beverage"] and table["japanese flag"] == ["flag: japan"]
    assert table["chinese flag"] == ["flag: china"]
    assert "bicycle" in table["bike"] and "mouse" in table["mice"]


def test_sampler_forms():
    names = ["cat face", "flag: japan", "hot beverage", "banana"]
    table = {"kitten": ["cat face"], "kittens": ["cat face"], "coffee": ["hot beverage"], "face": ["cat face", "alien"]}
    sampler = PhrasingSampler(names, table, plural_heads=["kittens"])
    assert sampler.table["face"] == ["cat face"]  # targets outside the names are dropped
    rng = random.Random(0)
    pairs = [sampler.sample(rng) for _ in range(3000)]
    assert {n for _, n in pairs} == set(names)
    typed = [p for p, _ in pairs]
    assert any(p.startswith("a picture of ") for p in typed) and any(p.endswith(" emoji") for p in typed)
    assert any(p in ("the flag of japan", "japan flag") for p in typed)
    assert any(p.startswith("an ") for p in typed) and not any(p.startswith("a kittens") for p in typed)
    assert not any(p.startswith("a a") or p.startswith("a e") for p in typed)  # "an emoji of ...", never "a emoji"
    assert any("coffee" in p for p, n in pairs if n == "hot beverage")


def test_typed_form_article():
    rng = random.Random(1)
    forms = {typed_form("owl", rng) for _ in range(400)}
    assert "an owl" in forms and "a owl" not in forms


def test_framed_captions_put_a_share_of_names_in_typed_frames_and_leave_flags_and_tones():
    from imagen_app.models.text_encoder import normalize_prompt
    from imagen_app.training.phrasing import framed_caption

    rng = random.Random(0)
    state = rng.getstate()
    assert framed_caption("pizza", rng, 0.0) == "pizza" and rng.getstate() == state  # share 0: no draw at all
    framed = [framed_caption("pizza", rng, 0.3) for _ in range(2000)]
    share = sum(f != "pizza" for f in framed) / len(framed)
    assert 0.25 < share < 0.35
    # every framed caption holds the name among other words, and normalising never takes the frame away
    assert all("pizza" in f and normalize_prompt(f) != "pizza" for f in framed if f != "pizza")
    assert {"draw", "emoji", "picture"} <= {w for f in framed for w in re.findall(r"[a-z]+", f)}
    assert {framed_caption(c, rng, 1.0) for c in ("flag: japan", "woman: dark skin tone")} == {"flag: japan",
                                                                                           "woman: dark skin tone"}


def test_text_tuning_keeps_old_ids_learns_new_words_and_resumes(tmp_path, tiny_pipe):
    from imagen_app.pipeline.pipeline import ImagenPipeline
    from imagen_app.training.text_tuning import TextTuningConfig, tune_text
    from imagen_app.training.tiny import tiny_pipeline

    folder = tmp_path / "pipe"
    tiny_pipeline(resolutions=(32,)).save_pretrained(str(folder))
    # "kitty" stands for two emoji: the least error over them is taught (modes)
    (folder / "keywords.txt").write_text("kitten\tcat face\nkittens\tcat face\ncoffee\thot beverage\n"
                                         "kitty\tcat face\nkitty\tred heart\n")
    cfg = TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run"), out=str(tmp_path / "run" / "export"),
                           steps=3, batch_size=8, anchor_batch=8, log_every=1, save_every=100, threads=1, modes=8)
    lines = []
    assert tune_text(cfg, log=lines.append) == 3
    old = ImagenPipeline.from_pretrained(str(folder)).tokenizer
    new_tok, new_enc = _load(cfg.out)
    for caption in ["red heart", "woman firefighter: dark skin tone", "man firefighter"]:  # the tiny model's words
        assert new_tok(caption).input_ids == old(caption).input_ids  # every old word keeps its id
    assert new_tok.unk_token_id not in new_tok("a picture of kittens").input_ids  # new words have rows
    assert new_enc.get_input_embeddings().num_embeddings == len(new_tok)
    anchor = [float(line.split("anchor ")[1].split()[0]) for line in lines if "anchor" in line]
    assert anchor and all(a < 0.05 for a in anchor)
    cfg.steps = 5
    lines.clear()
    assert tune_text(cfg, log=lines.append) == 5
    assert any("resumed" in line and "step 3" in line for line in lines)


def test_text_tuning_with_the_layers_anchor_moves_the_layers_and_holds_the_captions(tmp_path):
    """All of the encoder learns (new_words_only off); the anchor on what the U-Net's text layers read of every
    caption starts at zero (student = teacher) and is logged; an output objective with it is refused."""
    import pytest

    from imagen_app.training.text_tuning import TextTuningConfig, tune_text
    from imagen_app.training.tiny import tiny_pipeline

    folder = tmp_path / "pipe"
    tiny_pipeline(resolutions=(32,)).save_pretrained(str(folder))
    (folder / "keywords.txt").write_text("kitten\tcat face\ncoffee\thot beverage\n")
    cfg = TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run"), out=str(tmp_path / "run" / "export"),
                           steps=3, batch_size=4, anchor_batch=8, log_every=1, save_every=100, threads=1,
                           new_words_only=False, anchor_objective="layers", lr=1e-2)
    lines = []
    assert tune_text(cfg, log=lines.append) == 3
    anchor = [float(line.split("anchor ")[1].split()[0]) for line in lines if "anchor" in line]
    assert len(anchor) == 3 and anchor[0] < 1e-6 < anchor[-1]  # zero before the layers move, then held near it
    with pytest.raises(ValueError, match="anchor_objective"):
        tune_text(TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run2"), objective="output",
                                   new_words_only=False, anchor_objective="layers", steps=1), log=lines.append)


def _load(folder):
    from imagen_app.models.text_encoder import load_text_encoder

    return load_text_encoder(folder)


def test_unknown_words_named_once():
    from imagen_app.models.text_encoder import PromptEncoder
    from imagen_app.training.tiny import tiny_pipeline

    pipe = tiny_pipeline(resolutions=(8,))
    report = PromptEncoder(pipe.tokenizer, pipe.text_encoder).report("zzqx heart zzqx zzqx blorf")
    assert report.unknown_words == ["zzqx", "blorf"]


@pytest.mark.parametrize("kind", ["article", "plural", "frame", "flag", "keyword", "case"])
def test_everyday_prompt_list(kind):
    from imagen_app.evaluation.phrasing import PROMPTS
    from imagen_app.training.data import load_emoji

    names = {e.caption for e in load_emoji()}
    assert len(PROMPTS) >= 60 and len({p for p, _, _ in PROMPTS}) == len(PROMPTS)
    rows = [r for r in PROMPTS if r[1] == kind]
    assert len(rows) >= 6
    for prompt, _, acceptable in rows:
        assert [n for n in acceptable if n not in names] == [], prompt
    from imagen_app.evaluation.phrasing import as_names

    ceiling = as_names()  # the same list as names: each prompt an emoji's name that its own list accepts
    assert [k for _, k, _ in ceiling] == [k for _, k, _ in PROMPTS]
    assert all(name in names and name in acceptable for name, _, acceptable in ceiling)


def test_second_everyday_prompt_list_names_real_emoji_and_no_prompt_of_the_first():
    from imagen_app.evaluation.phrasing import MORE_PROMPTS, PROMPTS
    from imagen_app.training.data import load_emoji

    names = {e.caption for e in load_emoji()}
    assert len(MORE_PROMPTS) >= 40 and not {p for p, _, _ in MORE_PROMPTS} & {p for p, _, _ in PROMPTS}
    assert all(acceptable and set(acceptable) <= names for _, _, acceptable in MORE_PROMPTS)


def test_third_everyday_prompt_list_names_real_emoji_with_heads_no_other_list_or_grid_has():
    from imagen_app.evaluation.phrasing import GRID_HEADS, GRID_HEADS_2, MORE_PROMPTS, PROMPTS, THIRD_PROMPTS
    from imagen_app.training.data import load_emoji

    names = {e.caption for e in load_emoji()}
    assert len(THIRD_PROMPTS) >= 50 and len({p for p, _, _ in THIRD_PROMPTS}) == len(THIRD_PROMPTS)
    assert all(acceptable and set(acceptable) <= names for _, _, acceptable in THIRD_PROMPTS)
    earlier = " ".join(p.lower() for p, _, _ in PROMPTS + MORE_PROMPTS) + " " + " ".join({**GRID_HEADS, **GRID_HEADS_2})
    heads = {"frog", "snake", "unicorn", "carrots", "ducks", "crown", "present", "hotdog", "lollipop", "kiss"}
    assert heads <= {w.strip("!?.") for p, _, _ in THIRD_PROMPTS for w in p.lower().split()}
    assert not [h for h in heads if re.search(rf"\b{h}", earlier)]
    assert {k for _, k, _ in THIRD_PROMPTS} == {k for _, k, _ in PROMPTS}  # every kind of the first list


def test_portion_prompts_put_a_portion_phrase_before_food_that_real_emoji_show():
    from imagen_app.evaluation.phrasing import PORTION_PROMPTS
    from imagen_app.training.data import load_emoji
    from imagen_app.training.phrasing import PORTION_PHRASES

    names = {e.caption for e in load_emoji()}
    assert len(PORTION_PROMPTS) >= 12 and all(set(ok) <= names and ok for _, _, ok in PORTION_PROMPTS)
    assert all(any(f" {phrase} " in f" {p} " for phrase in PORTION_PHRASES) for p, _, _ in PORTION_PROMPTS)


def test_frame_grid_puts_every_frame_around_every_head_with_its_article():
    from imagen_app.evaluation.phrasing import GRID_FRAMES, GRID_HEADS, GRID_HEADS_2, MORE_PROMPTS, PROMPTS, grid_prompts
    from imagen_app.training.data import load_emoji

    names = {e.caption for e in load_emoji()}
    rows = grid_prompts()
    assert len(rows) == len(GRID_FRAMES) * len(GRID_HEADS) == len({p for p, _, _ in rows})
    assert len({k for _, k, _ in rows}) == len(GRID_FRAMES)
    assert ("an image of an octopus", "an image of X", ["octopus"]) in rows and ("octopus emoji", "X emoji", ["octopus"]) in rows
    second = grid_prompts(GRID_HEADS_2)
    assert ("draw a crab", "draw X", ["crab"]) in second and not {p for p, _, _ in rows} & {p for p, _, _ in second}
    assert all(set(acceptable) <= names for _, _, acceptable in rows + second)
    # the second grid's heads are in no list, so that it checks heads nothing was judged on
    listed = " ".join(p.lower() for p, _, _ in PROMPTS + MORE_PROMPTS)
    assert not [h for h in GRID_HEADS_2 if re.search(rf"\b{h}", listed)]


def test_a_new_words_row_starts_from_the_word_it_stands_for(tmp_path):
    """A plural of a one-word name starts as its singular; a country's adjective in a flag ("the Japanese flag" -> "flag: japanese"),
    a word of its own, as the country ("japanese_flag" -> "japan" of "flag: japan"), so that the flag reads at the
    start as the country's; the old rows stay as they were."""
    from imagen_app.training.text_tuning import TextTuning, TextTuningConfig
    from imagen_app.training.tiny import tiny_pipeline

    folder = tmp_path / "pipe"
    pipe = tiny_pipeline(resolutions=(32,))
    pipe.save_pretrained(str(folder))
    (folder / "keywords.txt").write_text("japanese flag\tflag: japan\npandas\tpanda\nglee\tgrinning face\n")
    run = TextTuning(TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run"), word_rows=4),
                     log=lambda *_: None)
    table = run.encoder.get_input_embeddings().weight
    old = pipe.text_encoder.get_input_embeddings().weight
    vocab, old_vocab = run.tokenizer.get_vocab(), pipe.tokenizer.get_vocab()
    assert run.tokenizer.tokenize(run.canonical("the Japanese flag!")) == ["flag", ":", "japanese_flag", "!"]
    assert (table[vocab["japanese_flag"]] == old[old_vocab["japan"]]).all()
    with torch.no_grad():
        typed, name = (run.embed(run.encoder, run.tokenizer, [p])[0] for p in (run.canonical("the Japanese flag"), "flag: japan"))
    assert torch.allclose(typed, name, atol=1e-5)
    # "glee" stands for a name of two words: it is read as two words, which start as "grinning" and "face"
    assert run.tokenizer.tokenize(run.canonical("Glee")) == ["glee", "glee_2"]
    assert (table[vocab["glee"]] == old[old_vocab["grinning"]]).all()
    assert (table[vocab["glee_2"]] == old[old_vocab["face"]]).all()
    with torch.no_grad():
        typed, name = (run.embed(run.encoder, run.tokenizer, [p])[0] for p in (run.canonical("glee"), "grinning face"))
    assert torch.allclose(typed, name, atol=1e-5)
    assert (table[: old.shape[0]] == old).all()


def test_a_keyword_may_be_drawn_as_the_emoji_whose_name_holds_it_and_a_name_only_as_itself():
    names = ["musical note", "musical score", "guitar", "pizza", "mushroom", "crying face", "pensive face", "cat face",
             "frowning face"]
    table = {"music": ["guitar", "musical note", "musical score"], "doctor": ["guitar", "crying face"],
             "pizza": ["mushroom"], "sad": ["crying face", "pensive face", "frowning face"],
             "face": ["crying face", "pensive face", "cat face", "frowning face"], "crying": ["crying face"]}
    sampler = PhrasingSampler(names, table, keyword_share=1.0)
    assert sampler.modes("music") == ["musical note", "musical score"]  # "music" begins "musical"
    assert sampler.modes("doctor") == ["guitar", "crying face"]  # no name holds it: every target
    assert sampler.modes("pizza") == ["pizza"]  # a name is drawn as itself, whatever else the table lists
    rng = random.Random(0)
    draws = [sampler.sample_with_modes(rng) for _ in range(3000)]
    assert all(name in modes for _, name, modes in draws)
    combined = {frozenset(modes) for typed, _, modes in draws if "sad" in typed and "face" in typed}
    assert combined == {frozenset(["crying face", "pensive face", "frowning face"])}  # the emoji that have both
    assert all(modes == ["pizza"] for _, name, modes in draws if name == "pizza")
    assert all(name == "mushroom" for typed, name, _ in draws if "mushroom" in typed)  # "pizza" is never the mushroom


def test_a_keyword_is_drawn_as_what_it_means_where_no_name_holds_it_or_only_after_with():
    names = ["people with bunny ears", "rabbit", "health worker", "pill", "pile of poo", "plunger", "bunny hat",
             "rabbit face"]
    table = {"bunny": ["people with bunny ears", "rabbit", "rabbit face"], "doctor": ["health worker", "pill"],
             "poop": ["pile of poo", "plunger"], "hat": ["bunny hat", "rabbit"]}
    meanings = {"bunny": (["rabbit", "rabbit face"], 0.97), "doctor": (["health worker"], 0.74),
                "poop": (["plunger"], 0.78), "hat": (["rabbit"], 0.95)}
    sampler = PhrasingSampler(names, table, keyword_share=1.0, meanings=meanings)
    assert sampler.modes("bunny") == ["rabbit", "rabbit face"]  # the people with bunny ears are people
    assert sampler.modes("doctor") == ["health worker"]  # no name holds it: what it means, not every target
    assert sampler.modes("poop") == ["pile of poo"]  # a name that shares its start before a meaning
    assert sampler.modes("hat") == ["bunny hat"]  # a name whose thing it is stays, whatever WordNet says
    assert PhrasingSampler(names, table, keyword_share=1.0).modes("doctor") == ["health worker", "pill"]


def test_common_words_are_drawn_more_often():
    sampler = PhrasingSampler(["cat face", "hot beverage"], {"kitten": ["cat face"], "medico": ["hot beverage"]},
                              keyword_share=1.0, zipf={"kitten": 4.0, "medico": 2.0})
    rng = random.Random(0)
    heads = [sampler.sample(rng)[1] for _ in range(2000)]
    assert 3 < heads.count("cat face") / heads.count("hot beverage") < 6  # 2^0 / 2^-2 = 4
    sharper = PhrasingSampler(["cat face", "hot beverage"], {"kitten": ["cat face"], "medico": ["hot beverage"]},
                              keyword_share=1.0, zipf={"kitten": 4.0, "medico": 2.0}, frequency_power=2.0)
    heads = [sharper.sample(rng)[1] for _ in range(4000)]
    assert 11 < heads.count("cat face") / heads.count("hot beverage") < 24  # (2^0 / 2^-2)^2 = 16


def test_new_words_only_leaves_every_old_caption_as_it_was(tmp_path):
    """With only the new words' rows learning (the default), a caption of old words encodes bit for bit as before."""
    from imagen_app.models.text_encoder import load_text_encoder
    from imagen_app.training.text_tuning import TextTuningConfig, tune_text
    from imagen_app.training.tiny import TINY_CAPTIONS, tiny_pipeline

    folder = tmp_path / "pipe"
    pipe = tiny_pipeline(resolutions=(32,))
    pipe.save_pretrained(str(folder))
    (folder / "keywords.txt").write_text("hearts\tred heart\njapanese flag\tflag: japan\n")
    cfg = TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run"), out=str(tmp_path / "export"),
                           steps=4, batch_size=4, threads=1)
    tune_text(cfg, log=lambda *_: None)
    tokenizer, encoder = load_text_encoder(cfg.out)
    for caption in TINY_CAPTIONS:
        before = pipe.text_encoder(**pipe.tokenizer(caption, return_tensors="pt")).last_hidden_state
        after = encoder(**tokenizer(caption, return_tensors="pt")).last_hidden_state
        assert torch.equal(before, after), caption
    new = encoder.get_input_embeddings().weight[tokenizer.get_vocab()["japanese"]]  # it started as "japan" and learned
    assert not torch.equal(new, pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.get_vocab()["japan"]])


def test_rows_that_no_caption_holds_learn_and_captions_stay(tmp_path):
    """An old word that no caption holds ("emoji", which only an alias had) learns as a new word does, and only the
    frames whose words can learn are shown ("picture of" as one new word); every caption still encodes bit for bit as
    before."""
    from transformers import T5EncoderModel

    from imagen_app.models.text_encoder import load_text_encoder
    from imagen_app.training.text_pretrain import small_t5_config, train_caption_tokenizer
    from imagen_app.training.text_tuning import TextTuning, TextTuningConfig, free_rows, tune_text
    from imagen_app.training.tiny import TINY_CAPTIONS, tiny_pipeline

    pipe = tiny_pipeline(resolutions=(32,))
    pipe.tokenizer = train_caption_tokenizer(TINY_CAPTIONS + ["heart emoji", "framed picture of"],
                                             max_length=pipe.tokenizer.model_max_length)
    pipe.text_encoder = T5EncoderModel(small_t5_config(len(pipe.tokenizer), d_model=16, layers=1, heads=2)).eval()
    folder = tmp_path / "pipe"
    pipe.save_pretrained(str(folder))
    (folder / "keywords.txt").write_text("hearts\tred heart\n")
    emoji = pipe.tokenizer.get_vocab()["emoji"]
    assert emoji in free_rows(pipe.tokenizer, TINY_CAPTIONS)
    assert pipe.tokenizer.get_vocab()["heart"] not in free_rows(pipe.tokenizer, TINY_CAPTIONS)

    cfg = TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run"), out=str(tmp_path / "export"),
                           steps=6, batch_size=8, threads=1)
    run = TextTuning(cfg, log=lambda *_: None)
    frames = {f for f, _, _ in run.sampler.frames}
    assert "{} emoji" in frames and "draw {}" in frames  # "draw" is a new word
    assert not run.frame_learnable("{} heart") and not run.frame_learnable("a panda of {}")  # caption words
    # "picture" and "of" are old words that a caption may hold, but "picture of" is read as one new word
    assert "a picture of {}" in frames and "picture_of" in run.tokenizer.tokenize("A Picture of the panda")
    tune_text(cfg, log=lambda *_: None)
    tokenizer0, encoder0 = load_text_encoder(str(folder))  # as saved (a fresh T5 and its reloaded copy differ in the last bit)
    tokenizer, encoder = load_text_encoder(cfg.out)
    for caption in TINY_CAPTIONS:
        before = encoder0(**tokenizer0(caption, return_tensors="pt")).last_hidden_state
        after = encoder(**tokenizer(caption, return_tensors="pt")).last_hidden_state
        assert torch.equal(before, after), caption
    assert not torch.equal(encoder.get_input_embeddings().weight[emoji], encoder0.get_input_embeddings().weight[emoji])


def test_learn_words_teaches_only_their_rows(tmp_path):
    """`learn_words=("frames",)`: the frame phrases' rows learn ("picture_of"); every other row, old or new, free
    or a caption's ("emoji", "hearts", "heart"), stays bit for bit, and only forms that hold a frame phrase are drawn."""
    from transformers import T5EncoderModel

    from imagen_app.models.text_encoder import load_text_encoder
    from imagen_app.training.text_pretrain import small_t5_config, train_caption_tokenizer
    from imagen_app.training.text_tuning import TextTuning, TextTuningConfig, tune_text
    from imagen_app.training.tiny import TINY_CAPTIONS, tiny_pipeline

    pipe = tiny_pipeline(resolutions=(32,))
    pipe.tokenizer = train_caption_tokenizer(TINY_CAPTIONS + ["heart emoji"], max_length=pipe.tokenizer.model_max_length)
    pipe.text_encoder = T5EncoderModel(small_t5_config(len(pipe.tokenizer), d_model=16, layers=1, heads=2)).eval()
    folder = tmp_path / "pipe"
    pipe.save_pretrained(str(folder))
    (folder / "keywords.txt").write_text("hearts\tred heart\nkitty\tgrinning face\n")
    cfg = TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run"), out=str(tmp_path / "export"),
                           steps=4, batch_size=8, threads=1, learn_words=("frames",))
    run = TextTuning(cfg, log=lambda *_: None)
    picture_of = run.tokenizer.get_vocab()["picture_of"]
    assert picture_of in run.learnable and run.tokenizer.get_vocab()["kitty"] not in run.learnable
    assert run.tokenizer.get_vocab()["emoji"] not in run.learnable
    tune_text(cfg, log=lambda *_: None)
    start = run.encoder.get_input_embeddings().weight.detach()  # the rows the run started from
    tokenizer, encoder = load_text_encoder(cfg.out)
    taught = encoder.get_input_embeddings().weight.detach()
    moved = {tokenizer.convert_ids_to_tokens(i) for i in range(len(taught)) if not torch.equal(taught[i], start[i])}
    assert "picture_of" in moved and all(t.endswith("_of") for t in moved)  # frame phrases only: not kitty, hearts


def test_flag_words_and_keywords_of_one_row_from_an_earlier_run_read_as_their_names_words(tmp_path):
    """"flag: american" reads as that many rows as "united states" has words, each starting as one of them, so that
    untaught it encodes exactly as "flag: united states" (one row, the mean of the two, drew another flag); with
    `word_rows`, so does an earlier run's keyword that no caption holds ("kitty" as "grinning face"), but not a word
    of the forms around a head ("emoji"), and a caption's word standing alone ("grinning" as "grinning face"). A
    second run adds nothing."""
    from transformers import T5EncoderModel

    from imagen_app.models.text_encoder import load_text_encoder
    from imagen_app.training.text_extension import extended_tokenizer
    from imagen_app.training.text_pretrain import small_t5_config, train_caption_tokenizer
    from imagen_app.training.text_tuning import TextTuningConfig, tune_text
    from imagen_app.training.tiny import TINY_CAPTIONS, tiny_pipeline

    pipe = tiny_pipeline(resolutions=(32,))
    # an earlier run's vocabulary: "american_flag" a word of one row
    tokenizer = extended_tokenizer(train_caption_tokenizer(TINY_CAPTIONS + ["flag: united states", "kitty", "emoji"],
                                                           max_length=pipe.tokenizer.model_max_length), [], [], ["american"])
    pipe.tokenizer = tokenizer
    pipe.text_encoder = T5EncoderModel(small_t5_config(len(tokenizer), d_model=16, layers=1, heads=2)).eval()
    folder = tmp_path / "pipe"
    pipe.save_pretrained(str(folder))
    (folder / "keywords.txt").write_text("american flag\tflag: united states\nemoji\tgrinning face\ngrinning\tgrinning face\n"
                                         "japanese flag\tflag: japan\nkitty\tgrinning face\n"
                                         "japan\tflag: japan\n")  # "japan" alone: a word of its own

    def encode(tok, enc, prompt):
        return enc(**tok(prompt, return_tensors="pt")).last_hidden_state

    tokenizer0, encoder0 = load_text_encoder(str(folder))  # as saved (a fresh T5 and its reloaded copy differ in the last bit)
    sizes = []
    for step, source in enumerate([folder, tmp_path / "export0"]):
        cfg = TextTuningConfig(weights=str(source), run_dir=str(tmp_path / f"run{step}"),
                               out=str(tmp_path / f"export{step}"), steps=0, threads=1, word_rows=4)
        tune_text(cfg, log=lambda *_: None)
        if step == 0:
            for f in ("keywords.txt", "unet_1", "captions.txt", "held_out.txt", "aliases.txt", "model_index.json"):
                if (folder / f).exists():
                    os.symlink(folder / f, tmp_path / "export0" / f)
        tok, enc = load_text_encoder(cfg.out)
        sizes.append(len(tok))
        assert tok.tokenize("flag: american") == ["flag", ":", "american_flag", "american_flag_2"]
        assert tok.tokenize("flag: japanese") == ["flag", ":", "japanese_flag"]
        assert torch.equal(encode(tok, enc, "flag: american"), encode(tok, enc, "flag: united states"))
        assert tok.tokenize("kitty") == ["kitty", "kitty_2"] and tok.tokenize("emoji") == ["emoji"]
        assert torch.equal(encode(tok, enc, "kitty"), encode(tok, enc, "grinning face"))
        # a caption's word, alone, is a word of its own ("grinning" of "grinning face")
        assert tok.tokenize("grinning") == ["grinning_alone", "grinning_alone_2"]
        assert tok.tokenize("grinning face") == ["grinning", "face"]
        assert torch.equal(encode(tok, enc, "grinning"), encode(tok, enc, "grinning face"))
        for caption in TINY_CAPTIONS:
            assert torch.equal(encode(tok, enc, caption), encode(tokenizer0, encoder0, caption))
    assert sizes[1] == sizes[0]  # the second run adds no rows


def test_portions_go_before_their_food_and_partners_are_the_other_words_of_an_emoji():
    """With `portions`, two keywords of one emoji of which one is a portion are put as "<portion> of <other>" or
    "<other> <portion>" ("slice of pizza", "pizza slice"; never "slice pizza"). An alone word's partners (`TextTuning.alone_partners`) are the one-word heads of
    the emoji it names, but not a word that follows it in a caption ("red apple" is a name: "red" stays there)."""
    import types

    from imagen_app.training.phrasing import PORTION_NOUNS
    from imagen_app.training.text_tuning import TextTuning

    names = ["pizza", "crying cat", "red apple", "teacup without handle"]
    table = {"slice": ["pizza"], "pie": ["pizza"], "sad": ["crying cat"], "cat": ["crying cat"], "red": ["red apple"],
             "apple": ["red apple"], "fruit": ["red apple"], "cup": ["teacup without handle"], "tea": ["teacup without handle"]}
    sampler = PhrasingSampler(names, table)
    sampler.portions = PORTION_NOUNS
    rng = random.Random(0)
    typed = [sampler.sample(rng)[0] for _ in range(4000)]
    assert any(re.search(r"\bslice of (a |the |some )?pie\b", p) for p in typed)
    assert any(re.search(r"\bpie slice\b", p) for p in typed)
    assert not any(re.search(r"\b(slice pie|pie of slice)\b", p) for p in typed)
    assert any(re.search(r"\bcup of tea\b", p) for p in typed)
    run = types.SimpleNamespace(sampler=sampler)
    partners = TextTuning.alone_partners(run, ["sad", "red", "cup"], names)
    assert partners == {"sad": ["cat"], "red": ["fruit"], "cup": ["tea"]}


def test_pairs_read_an_alone_word_before_its_partner_and_learn_only_the_words_they_name(tmp_path):
    """`pairs`: "grinning" (a caption's word, read alone as "grinning face") before "kitty" (another keyword of the
    grinning face) reads as its alone rows, which `learn_words=("pairs",)` teaches, with every row of them; "grinning
    face" reads as before. `verb_phrases`: "show me" is one word, which "frames" teaches."""
    from transformers import T5EncoderModel

    from imagen_app.training.text_pretrain import small_t5_config, train_caption_tokenizer
    from imagen_app.training.text_tuning import TextTuning, TextTuningConfig
    from imagen_app.training.tiny import TINY_CAPTIONS, tiny_pipeline

    pipe = tiny_pipeline(resolutions=(32,))
    pipe.tokenizer = train_caption_tokenizer(TINY_CAPTIONS + ["kitty", "show me"], max_length=pipe.tokenizer.model_max_length)
    pipe.text_encoder = T5EncoderModel(small_t5_config(len(pipe.tokenizer), d_model=16, layers=1, heads=2)).eval()
    folder = tmp_path / "pipe"
    pipe.save_pretrained(str(folder))
    (folder / "keywords.txt").write_text("grinning\tgrinning face\nkitty\tgrinning face\n")
    cfg = TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / "run"), word_rows=4, pairs=True,
                           verb_phrases=True, learn_words=("frames", "pairs"))
    run = TextTuning(cfg, log=lambda *_: None)
    assert run.partners == {"grinning": ["kitty"]}
    tokenize = run.tokenizer.tokenize
    assert tokenize("grinning kitty") == ["grinning_alone", "grinning_alone_2", "kitty", "kitty_2"]
    assert tokenize("show me kitty") == ["show_me", "kitty", "kitty_2"] and tokenize("grinning face") == ["grinning", "face"]
    learned = set(run.tokenizer.convert_ids_to_tokens(sorted(run.learnable)))
    assert {"grinning_alone", "grinning_alone_2", "show_me"} <= learned and not learned & {"kitty", "grinning", "face"}


def test_portion_phrases_read_as_one_word_learned_with_the_frames_unless_a_caption_holds_one(tmp_path):
    """`portion_phrases`: "a cup of coffee" reads as "cup_of" + "coffee", whose row "frames" teaches, and typed forms
    put heads in it; "glass of" stays its words where a caption holds it ("glass of milk")."""
    from transformers import T5EncoderModel

    from imagen_app.training.phrasing import portion_frames
    from imagen_app.training.text_pretrain import small_t5_config, train_caption_tokenizer
    from imagen_app.training.text_tuning import TextTuning, TextTuningConfig
    from imagen_app.training.tiny import TINY_CAPTIONS, tiny_pipeline

    pipe = tiny_pipeline(resolutions=(32,))
    captions = TINY_CAPTIONS + ["glass of milk", "hot beverage"]
    pipe.tokenizer = train_caption_tokenizer(captions, max_length=pipe.tokenizer.model_max_length)
    pipe.text_encoder = T5EncoderModel(small_t5_config(len(pipe.tokenizer), d_model=16, layers=1, heads=2)).eval()
    folder = tmp_path / "pipe"
    pipe.save_pretrained(str(folder))
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    (folder / "keywords.txt").write_text("coffee\thot beverage\n")
    runs = {}
    for on in (False, True):
        cfg = TextTuningConfig(weights=str(folder), run_dir=str(tmp_path / f"run{on}"), portion_phrases=on,
                               learn_words=("frames",), portion_frame_weight=0.02)
        runs[on] = TextTuning(cfg, log=lambda *_: None)
    tokenize = runs[True].tokenizer.tokenize
    assert tokenize("cup of coffee")[0] == "cup_of" and tokenize("slice  of coffee")[0] == "slice_of"
    assert tokenize("glass of milk") == ["glass", "of", "milk"]
    assert runs[False].tokenizer.tokenize("cup of coffee")[:2] == ["cup", "of"]
    learned = set(runs[True].tokenizer.convert_ids_to_tokens(sorted(runs[True].learnable)))
    assert {"cup_of", "slice_of"} <= learned and "glass_of" not in learned
    frames = {f for f, _, _ in runs[True].sampler.frames}
    assert "a cup of {}" in frames and "a glass of {}" not in frames  # (its words are no learned word)
    assert {w for f, w, _ in runs[True].sampler.frames if f == "a cup of {}"} == {0.02}  # portion_frame_weight
    assert not {f for f, _, _ in runs[False].sampler.frames} & {f for f, _, _ in portion_frames()}


def test_learning_rate_warms_up_then_stays_or_falls_to_zero_at_the_last_step():
    """`lr_decay`: "constant" keeps the full rate after the warm-up (the runs before session 20); "cosine" halves it
    midway and ends at 0; a resumed run whose optimizer state was dropped warms up again from its step."""
    from imagen_app.training.text_tuning import TextTuningConfig, lr_factor

    constant = TextTuningConfig(steps=1000, warmup_steps=50)
    cosine = TextTuningConfig(steps=1000, warmup_steps=50, lr_decay="cosine")
    assert lr_factor(0, 0, constant) == pytest.approx(1 / 50) and lr_factor(999, 0, constant) == 1.0
    assert lr_factor(49, 0, cosine) == pytest.approx(0.5 * (1 + math.cos(math.pi * 49 / 1000)))
    assert lr_factor(500, 0, cosine) == pytest.approx(0.5)
    assert lr_factor(1000, 0, cosine) == pytest.approx(0.0, abs=1e-12)
    assert all(lr_factor(s, 0, cosine) >= lr_factor(s + 1, 0, cosine) for s in range(50, 1000))
    assert lr_factor(600, 600, cosine) == pytest.approx(lr_factor(600, 0, cosine) / 50)  # warming up again
    with pytest.raises(ValueError, match="lr_decay"):
        lr_factor(10, 0, TextTuningConfig(lr_decay="linear"))
