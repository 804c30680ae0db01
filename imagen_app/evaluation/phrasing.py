"""Everyday prompts as people type them (`evaluate --parts phrasing`).

Each prompt has the emoji that are acceptable answers ("kitty": the cat or the cat face; "a happy face": any
grinning or smiling face). Right = an acceptable emoji among the 3 nearest real renders of the base stage's image
(pixel L2 against the whole corpus, as the family figures are measured), at seeds 0 and 1. Grouped by the kind of
phrasing, so that an average cannot hide a failing kind. The list is written by hand, apart from the training
forms (`training/phrasing.py`): its keywords and frames are the ones people use, not drawn from the table.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

SMILING = ["grinning face", "grinning face with big eyes", "grinning face with smiling eyes", "beaming face with smiling eyes",
           "smiling face with smiling eyes", "slightly smiling face", "smiling face", "grinning squinting face"]
SAD = ["frowning face", "slightly frowning face", "crying face", "loudly crying face", "sad but relieved face",
       "disappointed face", "pensive face", "worried face", "frowning face with open mouth"]
# every cat emoji is a drawing of a cat ("a picture of a cat" drawn as the kissing cat is right)
CAT = ["cat", "cat face", "black cat", "grinning cat", "grinning cat with smiling eyes", "cat with tears of joy",
       "smiling cat with heart-eyes", "cat with wry smile", "kissing cat", "pouting cat", "crying cat", "weary cat"]
DOG = ["dog", "dog face"]
CARS = ["automobile", "oncoming automobile", "taxi", "oncoming taxi", "racing car", "police car", "sport utility vehicle"]
MOONS = ["crescent moon", "first quarter moon", "first quarter moon face", "full moon", "full moon face", "last quarter moon",
         "last quarter moon face", "new moon", "new moon face", "waning crescent moon", "waning gibbous moon",
         "waxing crescent moon", "waxing gibbous moon"]
HEARTS = ["red heart", "sparkling heart", "beating heart", "growing heart", "two hearts", "revolving hearts", "heart with arrow",
          "heart with ribbon", "heart decoration", "smiling face with hearts", "smiling face with heart-eyes",
          # a heart of any colour is a heart emoji
          "orange heart", "yellow heart", "green heart", "blue heart", "light blue heart", "purple heart", "pink heart",
          "brown heart", "black heart", "grey heart", "white heart"]

# (prompt, kind, acceptable emoji names)
PROMPTS: List[Tuple[str, str, Sequence[str]]] = [
    # articles and determiners
    ("an astronaut", "article", ["astronaut", "man astronaut", "woman astronaut"]),
    ("a red car", "article", CARS),
    ("a dog", "article", DOG),
    ("the moon", "article", MOONS),
    ("a banana", "article", ["banana"]),
    ("an apple", "article", ["red apple", "green apple"]),
    ("some grapes", "article", ["grapes"]),
    ("a rocket", "article", ["rocket"]),
    ("an owl", "article", ["owl"]),
    ("a pizza", "article", ["pizza"]),
    ("a snowman", "article", ["snowman", "snowman without snow"]),
    ("an umbrella", "article", ["umbrella", "closed umbrella", "umbrella with rain drops", "umbrella on ground"]),
    ("the panda", "article", ["panda"]),
    # plurals
    ("cats", "plural", CAT),
    ("apples", "plural", ["red apple", "green apple"]),
    ("mice", "plural", ["mouse", "mouse face"]),
    ("strawberries", "plural", ["strawberry"]),
    ("balloons", "plural", ["balloon"]),
    ("foxes", "plural", ["fox"]),
    ("some bananas", "plural", ["banana"]),
    ("rockets", "plural", ["rocket"]),
    ("owls", "plural", ["owl"]),
    # frames: "X emoji", "a picture of X", ...
    ("dog emoji", "frame", DOG),
    ("a picture of a cat", "frame", CAT),
    ("a drawing of a house", "frame", ["house", "house with garden"]),
    ("heart emoji", "frame", HEARTS),
    ("an image of a tree", "frame", ["deciduous tree", "evergreen tree", "palm tree", "christmas tree"]),
    ("a photo of a horse", "frame", ["horse", "horse face"]),
    ("fire emoji", "frame", ["fire"]),
    ("ghost icon", "frame", ["ghost"]),
    ("the rocket emoji", "frame", ["rocket"]),
    ("an icon of a banana", "frame", ["banana"]),
    # flags
    ("the Japanese flag", "flag", ["flag: japan"]),
    ("flag of France", "flag", ["flag: france"]),
    ("German flag", "flag", ["flag: germany"]),
    ("the flag of Brazil", "flag", ["flag: brazil"]),
    ("Canadian flag", "flag", ["flag: canada"]),
    ("the Italian flag", "flag", ["flag: italy"]),
    ("Mexican flag", "flag", ["flag: mexico"]),
    ("the American flag", "flag", ["flag: united states"]),
    ("Indian flag", "flag", ["flag: india"]),
    ("the Swedish flag", "flag", ["flag: sweden"]),
    # synonyms and keywords
    ("kitty", "keyword", CAT),
    ("kitten", "keyword", CAT),
    ("a happy face", "keyword", SMILING),
    ("a pizza slice", "keyword", ["pizza"]),
    ("coffee", "keyword", ["hot beverage"]),
    ("a doctor", "keyword", ["health worker", "man health worker", "woman health worker"]),
    ("bike", "keyword", ["bicycle"]),
    ("puppy", "keyword", DOG),
    ("a sad face", "keyword", SAD),
    ("a laughing face", "keyword", ["face with tears of joy", "rolling on the floor laughing", "grinning squinting face"]),
    ("a teacher", "keyword", ["teacher", "man teacher", "woman teacher"]),
    ("a cop", "keyword", ["police officer", "man police officer", "woman police officer"]),
    ("a plane", "keyword", ["airplane", "small airplane", "airplane departure", "airplane arrival"]),
    ("a bunny", "keyword", ["rabbit", "rabbit face"]),
    ("tea", "keyword", ["hot beverage", "teacup without handle", "teapot"]),
    ("beer", "keyword", ["beer mug", "clinking beer mugs"]),
    ("a cake", "keyword", ["birthday cake", "shortcake", "cupcake"]),
    ("music", "keyword", ["musical note", "musical notes"]),
    ("a cell phone", "keyword", ["mobile phone", "mobile phone with arrow"]),
    ("money", "keyword", ["money bag", "dollar banknote", "money with wings", "euro banknote", "yen banknote", "pound banknote"]),
    ("a cowboy", "keyword", ["cowboy hat face"]),
    ("a tv", "keyword", ["television"]),
    ("football", "keyword", ["soccer ball", "american football"]),
    ("a cab", "keyword", ["taxi", "oncoming taxi"]),
    # case and punctuation
    ("PANDA", "case", ["panda"]),
    ("Red Heart!", "case", HEARTS),
    ("Pizza?", "case", ["pizza"]),
    ("Dog.", "case", DOG),
    ("A Cute Kitten!", "case", CAT),
    ("THE JAPANESE FLAG", "case", ["flag: japan"]),
]

# A second list, written after the first one's changes were shipped (2026-12-06, session 17), to check that they
# carry beyond the prompts they were measured on (`evaluate --parts phrasing_more`): other heads in the same frames,
# other keywords and synonyms, and forms the first list lacks ("a slice of pizza", "a bunny rabbit").
MORE_PROMPTS: List[Tuple[str, str, Sequence[str]]] = [
    ("a picture of a dog", "frame", DOG),
    ("an image of a cat", "frame", CAT),
    ("a photo of a rocket", "frame", ["rocket"]),
    ("a drawing of a tree", "frame", ["deciduous tree", "evergreen tree", "palm tree", "christmas tree"]),
    ("an icon of a house", "frame", ["house", "house with garden"]),
    ("a sketch of an owl", "frame", ["owl"]),
    ("show me a panda", "frame", ["panda"]),
    ("draw a rocket", "frame", ["rocket"]),
    ("a photo of an apple", "frame", ["red apple", "green apple"]),
    ("an illustration of a fox", "frame", ["fox"]),
    ("a kitten", "keyword", ["cat", "cat face"]),
    ("a puppy", "keyword", DOG),
    ("a bike", "keyword", ["bicycle"]),
    ("a cup of tea", "keyword", ["teacup without handle", "hot beverage"]),
    ("a smiley face", "keyword", SMILING),
    ("an angry face", "keyword", ["angry face", "enraged face", "face with symbols on mouth"]),
    ("a crying face", "article", ["crying face", "loudly crying face"]),
    ("a phone", "keyword", ["mobile phone", "telephone", "telephone receiver"]),
    ("a cellphone", "keyword", ["mobile phone"]),
    ("a laptop", "article", ["laptop"]),
    ("a boat", "keyword", ["sailboat", "speedboat", "motor boat", "canoe", "ship", "passenger ship", "ferry"]),
    ("a car", "keyword", CARS),
    ("a burger", "keyword", ["hamburger"]),
    ("a donut", "keyword", ["doughnut"]),
    ("a bunny rabbit", "keyword", ["rabbit", "rabbit face"]),
    ("a sad cat", "keyword", ["crying cat", "pouting cat", "weary cat"]),
    ("the sun", "article", ["sun", "sun with face"]),
    ("a star", "article", ["star", "glowing star", "shooting star"]),
    ("a bee", "keyword", ["honeybee"]),
    ("some cookies", "plural", ["cookie"]),
    ("a police officer", "article", ["police officer", "man police officer", "woman police officer"]),
    ("a chef", "keyword", ["cook", "man cook", "woman cook"]),
    ("a nurse", "keyword", ["health worker", "man health worker", "woman health worker"]),
    ("a fireman", "keyword", ["firefighter", "man firefighter"]),
    ("a cop car", "keyword", ["police car", "oncoming police car"]),
    ("a taxi cab", "keyword", ["taxi", "oncoming taxi"]),
    ("a birthday cake", "article", ["birthday cake"]),
    ("a slice of pizza", "keyword", ["pizza"]),
    ("a cup of coffee", "keyword", ["hot beverage"]),
    ("the Spanish flag", "flag", ["flag: spain"]),
    ("the flag of Canada", "flag", ["flag: canada"]),
]

# A third list, written in session 20 before any of its runs was judged (`evaluate --parts phrasing_third`): heads
# that neither list nor grid has, in the forms of the first two, to see whether a run's gains carry to prompts no
# one chose it on.
THIRD_PROMPTS: List[Tuple[str, str, Sequence[str]]] = [
    ("a frog", "article", ["frog"]),
    ("an ice cream", "article", ["ice cream", "soft ice cream"]),
    ("a snake", "article", ["snake"]),
    ("the crown", "article", ["crown"]),
    ("a unicorn", "article", ["unicorn"]),
    ("an alien", "article", ["alien", "alien monster"]),
    ("a skull", "article", ["skull", "skull and crossbones"]),
    ("some carrots", "plural", ["carrot"]),
    ("ducks", "plural", ["duck"]),
    ("eggs", "plural", ["egg", "nest with eggs"]),
    ("pigs", "plural", ["pig", "pig face"]),
    ("the cows", "plural", ["cow", "cow face"]),
    ("monkeys", "plural", ["monkey", "monkey face", "see-no-evil monkey", "hear-no-evil monkey", "speak-no-evil monkey"]),
    ("some balloons", "plural", ["balloon"]),
    ("frog emoji", "frame", ["frog"]),
    ("a picture of a snake", "frame", ["snake"]),
    ("a drawing of a unicorn", "frame", ["unicorn"]),
    ("an icon of a bell", "frame", ["bell"]),
    ("show me a ghost", "frame", ["ghost"]),
    ("draw a duck", "frame", ["duck"]),
    ("a photo of a cow", "frame", ["cow", "cow face"]),
    ("a cartoon of a pig", "frame", ["pig", "pig face"]),
    ("crown emoji", "frame", ["crown"]),
    ("an image of the sun", "frame", ["sun", "sun with face"]),
    ("the Chinese flag", "flag", ["flag: china"]),
    ("flag of Germany", "flag", ["flag: germany"]),
    ("the British flag", "flag", ["flag: united kingdom"]),
    ("Australian flag", "flag", ["flag: australia"]),
    ("the flag of Greece", "flag", ["flag: greece"]),
    ("Irish flag", "flag", ["flag: ireland"]),
    ("a present", "keyword", ["wrapped gift"]),
    ("a gift", "keyword", ["wrapped gift"]),
    ("wine", "keyword", ["wine glass"]),
    ("a hotdog", "keyword", ["hot dog"]),
    ("fries", "keyword", ["french fries"]),
    ("a computer", "keyword", ["laptop", "desktop computer"]),
    ("a kid", "keyword", ["child", "boy", "girl"]),
    ("a kiss", "keyword", ["kiss mark", "face blowing a kiss", "kissing face", "kissing face with closed eyes",
                           "kissing face with smiling eyes", "kiss"]),
    ("snow", "keyword", ["snowflake", "cloud with snow", "snowman", "snowman without snow", "snow-capped mountain"]),
    ("lightning", "keyword", ["high voltage", "cloud with lightning", "cloud with lightning and rain"]),
    ("a chicken", "article", ["chicken", "rooster"]),
    ("a chick", "keyword", ["baby chick", "hatching chick", "front-facing baby chick"]),
    ("a lollipop", "article", ["lollipop"]),
    ("chocolate", "keyword", ["chocolate bar"]),
    ("cheese", "keyword", ["cheese wedge"]),
    ("a flower", "keyword", ["tulip", "rose", "sunflower", "blossom", "cherry blossom", "hibiscus", "bouquet",
                             "white flower", "wilted flower"]),
    ("a train", "article", ["train", "locomotive", "high-speed train", "bullet train", "railway car", "light rail",
                            "tram", "metro"]),
    ("a smiling face", "keyword", SMILING + ["smiling face", "slightly smiling face", "smiling face with smiling eyes"]),
    ("a heart", "keyword", HEARTS),
    ("a book", "keyword", ["closed book", "open book", "green book", "blue book", "orange book", "books", "notebook"]),
    ("FROG", "case", ["frog"]),
    ("Unicorn!", "case", ["unicorn"]),
    ("Ice Cream?", "case", ["ice cream", "soft ice cream"]),
    ("The Crown.", "case", ["crown"]),
]

# "<portion> of <food>", as people ask for a serving (session 20, `evaluate --parts phrasing_portions`): the phrase
# words read as one word with `tune-text --portion-phrases` ("cup_of"), "glass of" as its words (a caption holds it).
PORTION_PROMPTS: List[Tuple[str, str, Sequence[str]]] = [
    ("a cup of coffee", "portion", ["hot beverage"]),
    ("a cup of tea", "portion", ["hot beverage", "teacup without handle"]),
    ("a slice of pizza", "portion", ["pizza"]),
    ("a piece of cake", "portion", ["shortcake", "birthday cake", "cupcake"]),
    ("a bowl of rice", "portion", ["cooked rice", "rice ball", "curry rice"]),
    ("a glass of wine", "portion", ["wine glass"]),
    ("a bottle of wine", "portion", ["bottle with popping cork", "wine glass"]),
    ("a bunch of grapes", "portion", ["grapes"]),
    ("a mug of beer", "portion", ["beer mug", "clinking beer mugs"]),
    ("a bar of chocolate", "portion", ["chocolate bar"]),
    ("a plate of spaghetti", "portion", ["spaghetti"]),
    ("a box of popcorn", "portion", ["popcorn"]),
]

# A grid of every frame people put around a head, with heads that neither list has in a frame (session 18;
# `evaluate --parts phrasing_grid`, one seed): a list holds a few pairs of each frame, and the frames taught on them
# were right on the list (18/20) and on 64% of this grid.
GRID_FRAMES = ["a picture of a {}", "a drawing of a {}", "an image of a {}", "an icon of a {}", "a photo of a {}",
               "{} emoji", "draw a {}", "show me a {}", "a sketch of a {}", "a cartoon of a {}"]
GRID_HEADS: Dict[str, Sequence[str]] = {
    "pizza": ["pizza"], "guitar": ["guitar"], "elephant": ["elephant"], "penguin": ["penguin"], "bicycle": ["bicycle"],
    "octopus": ["octopus"], "tiger": ["tiger", "tiger face"], "pineapple": ["pineapple"], "snail": ["snail"],
    "trophy": ["trophy"], "lemon": ["lemon"], "turtle": ["turtle"]}
# A second set of heads, in no list either, chosen in session 19 after the first grid had been worked on
# (`evaluate --parts phrasing_grid2`): whether what the frames learned carries to heads no run was judged on.
GRID_HEADS_2: Dict[str, Sequence[str]] = {
    "butterfly": ["butterfly"], "camera": ["camera", "camera with flash"], "crab": ["crab"], "candle": ["candle"],
    "robot": ["robot"], "whale": ["whale", "spouting whale"], "giraffe": ["giraffe"], "mushroom": ["mushroom"],
    "lion": ["lion"], "cactus": ["cactus"], "kangaroo": ["kangaroo"], "violin": ["violin"]}


def grid_prompts(heads: Dict[str, Sequence[str]] = GRID_HEADS) -> List[Tuple[str, str, Sequence[str]]]:
    """(prompt, frame, acceptable emoji) for each frame and head of the grid ("an image of an octopus")."""
    out = []
    for frame in GRID_FRAMES:
        for head, acceptable in heads.items():
            typed = frame.replace("a {}", "an {}") if head[0] in "aeiou" else frame
            out.append((typed.format(head), frame.replace("a {}", "X").replace("{}", "X"), acceptable))
    return out


# Every phrasing part of `evaluate --parts`: its title, its prompts (made when asked for) and seeds, in the order the
# parts run and print: the lists at two seeds, the grids (every frame around heads no list has in a frame) at one, and
# the first list as its emoji's names (the ceiling of the phrasing figures).
PHRASING_PARTS: Dict[str, Tuple[str, Callable[[], List[Tuple[str, str, Sequence[str]]]], Tuple[int, ...]]] = {
    "phrasing": ("Everyday phrasings", lambda: PROMPTS, (0, 1)),
    "phrasing_more": ("A second list of everyday prompts, written after the first one's changes", lambda: MORE_PROMPTS, (0, 1)),
    "phrasing_third": ("A third list, written before any of its runs was judged", lambda: THIRD_PROMPTS, (0, 1)),
    "phrasing_portions": ("Portions ('a cup of coffee')", lambda: PORTION_PROMPTS, (0, 1)),
    "phrasing_grid": ("Frames x heads (a grid)", lambda: grid_prompts(GRID_HEADS), (0,)),
    "phrasing_grid2": ("The same frames x a second set of heads", lambda: grid_prompts(GRID_HEADS_2), (0,)),
    "phrasing_names": ("The same prompts as their emoji's names (the ceiling)", lambda: as_names(), (0, 1)),
}


def phrasing(pipe, emojis, corpus, generate_base, seeds=(0, 1), prompts=PROMPTS) -> Dict:
    """Right / asked by kind and overall, with each wrong prompt's nearest render and the words the encoder did not
    know. `generate_base(pipe, prompts, seed)`: the base stage's images, as evaluate.py makes them."""
    import torch

    index = {e.caption: i for i, e in enumerate(emojis)}
    missing = sorted({n for _, _, ok in prompts for n in ok if n not in index})
    rows = []
    for prompt, kind, acceptable in prompts:
        ok = {index[n] for n in acceptable if n in index}
        images = torch.cat([generate_base(pipe, [prompt], s) for s in seeds])
        distances = torch.cdist(images.flatten(1), corpus.flatten(1))
        nearest3 = distances.topk(3, largest=False).indices.tolist()
        right = [any(i in ok for i in n3) for n3 in nearest3]
        report = pipe.check_prompt(prompt)
        rows.append(dict(prompt=prompt, kind=kind, right=right, nearest=[emojis[n3[0]].caption for n3 in nearest3],
                         understood=report.prompt, unknown=report.unknown_words))
    kinds: Dict[str, Dict] = {}
    for r in rows:
        k = kinds.setdefault(r["kind"], dict(right=0, asked=0))
        k["right"] += sum(r["right"])
        k["asked"] += len(r["right"])
    total = dict(right=sum(k["right"] for k in kinds.values()), asked=sum(k["asked"] for k in kinds.values()))
    for k in list(kinds.values()) + [total]:
        k["accuracy"] = k["right"] / max(1, k["asked"])
    return dict(overall=total, by_kind=kinds, prompts=len(rows), seeds=list(seeds), missing_names=missing,
                failures=[r for r in rows if not all(r["right"])])


def as_names(prompts=PROMPTS) -> List[Tuple[str, str, Sequence[str]]]:
    """The same list with each prompt replaced by its first acceptable emoji's name: the ceiling of the phrasing
    figures, what the model draws when it reads the typed form as well as it reads the name."""
    return [(acceptable[0], kind, acceptable) for _, kind, acceptable in prompts]


def print_phrasing(r: Dict, title: str = "Everyday phrasings") -> None:
    print(f"\n{title} ({r['prompts']} prompts x seeds {r['seeds']}; right = an acceptable emoji among the "
          "3 nearest real renders)")
    width = max([10] + [len(kind) for kind in r["by_kind"]])
    for kind, k in r["by_kind"].items():
        print(f"  {kind:{width}s} {k['right']:3d}/{k['asked']:<3d} {k['accuracy']:.0%}")
    o = r["overall"]
    print(f"  {'overall':{width}s} {o['right']:3d}/{o['asked']:<3d} {o['accuracy']:.0%}")
    for f in r["failures"]:
        print(f"    wrong: {f['prompt']!r} -> {f['nearest']} (understood {f['understood']!r}"
              + (f", unknown {f['unknown']})" if f["unknown"] else ")"))
