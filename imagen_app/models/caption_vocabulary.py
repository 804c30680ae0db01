"""The names a model was trained on, and the ways people type them.

The base U-Net learned each emoji under its CLDR name ("flag: japan", "family: man, woman, boy",
"woman firefighter: dark skin tone"); people type "japan", "Japan flag", "family man woman boy",
"cote d'ivoire". `normalize_prompt` (text_encoder.py) already brings case, spacing, skin tones and
"flag of X" / "X flag" to the CLDR form by rule; a `CaptionVocabulary` goes one step further, by
lookup in the pipeline's own caption list (`captions.txt` and `held_out.txt` beside the weights):

- a prompt whose *folded* form (no punctuation or accents, "&" read as "and") is the folded form of
  exactly one known name becomes that name: "family man woman boy" -> "family: man, woman, boy";
- a country typed alone becomes its flag ("japan" -> "flag: japan", "myanmar" -> "flag: myanmar (burma)"),
  unless the word is itself the name of another emoji ("turkey" stays the bird);
- an emoji's alias (the shortcodes of chat apps, `aliases.txt`: "cupid" -> "heart with arrow", ":knife:" ->
  "kitchen knife"), unless it is a known name or a country ("sunglasses" stays the sunglasses emoji);
- any of these after a leading article or determiner ("an astronaut", "the panda", "some grapes").

A known name always maps to itself, so training captions (all known names) are encoded exactly as
before: the lookup is part of the one prompt normalisation, shared by training and inference. What
it does is shown to the user (the "understood" box shows the prompt the model saw). Prompts that are
not a known name in any form pass through without a leading article ("a red car" -> "red car": the U-Net learned
names, which start with their content word, and reads the text tokens by position), nor one after a frame ("a picture
of a tree" -> "picture of tree": "a" is a caption's word); the rest, composition
included, is left to the model. Whoever trains a U-Net on other captions (the scene corpus) gives them the same
normalisation, so that training and the page read a caption alike.
"""
from __future__ import annotations

import os
import re
import unicodedata
from typing import Dict, Iterable, List, Optional, Set

from .text_encoder import normalize_prompt

CAPTION_FILES = ("captions.txt", "held_out.txt")
ALIAS_FILE = "aliases.txt"  # one "alias<TAB>name" per line
# A leading article or determiner, dropped only where a known name remains (a name that starts with one, such as
# "a button (blood type)", matches whole first).
_DETERMINER = re.compile(r"^(?:a|an|the|some|my|this|one)\s+(?=\S)")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+(?=\S)")
# The nouns people frame what they ask for with ("a picture of a cat", "an icon of the moon"), each with how often
# the typed forms of training use it (training/phrasing.py); and the verbs ("draw me a cat").
FRAME_NOUNS = {"picture": 0.06, "drawing": 0.05, "image": 0.04, "icon": 0.03, "emoji": 0.04, "photo": 0.03,
               "photograph": 0.01, "sketch": 0.01, "painting": 0.01, "illustration": 0.01, "cartoon": 0.01,
               "symbol": 0.01, "sticker": 0.01, "doodle": 0.005, "pic": 0.005, "clipart": 0.005}
FRAME_VERBS = ("draw me", "draw", "show me")
# An article after a frame, which is no part of what is asked for: "a" and "the" are caption words ("a button (blood
# type)", "sign of the horns"), and "a picture of a tree" read that way drew the A button (`canonical` drops it).
_FRAME_ARTICLE = re.compile(r"^((?:(?:a|an) )?(?:%s) of |(?:%s) )(?:a|an|the)\s+(?=\S)"
                            % ("|".join(FRAME_NOUNS), "|".join(FRAME_VERBS)))


def fold(text: str) -> str:
    """The form two spellings of one name share: accents, apostrophes and punctuation dropped, "&" as "and",
    lower case, single spaces. "Côte d’Ivoire" and "cote divoire" fold alike; "flag: japan" -> "flag japan"."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    text = re.sub(r"['’`]", "", text.replace("&", " and "))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


class CaptionVocabulary:
    """Folded form -> the one known name it stands for (see the module docstring)."""

    def __init__(self, names: Iterable[str], files: Optional[Dict[str, List[str]]] = None,
                 aliases: Optional[Dict[str, str]] = None):
        self.names: List[str] = list(dict.fromkeys(n for n in map(normalize_prompt, names) if n))
        self.files = files or {}  # file name -> its lines, as read by from_folder (save writes them back)
        self.aliases = dict(aliases or {})  # alias -> known name
        by_fold: Dict[str, Set[str]] = {}
        for name in self.names:
            by_fold.setdefault(fold(name), set()).add(name)
        countries: Dict[str, Set[str]] = {}
        for name in self.names:
            if name.startswith("flag: "):
                country = name[len("flag: "):]
                for form in {fold(country), fold(re.sub(r"\s*\([^)]*\)", "", country))}:  # "myanmar (burma)": "myanmar" too
                    if form and form not in by_fold:  # another emoji's own name wins ("turkey")
                        countries.setdefault(form, set()).add(name)
        known = set(self.names)
        by_alias: Dict[str, Set[str]] = {}
        for alias, name in self.aliases.items():
            form, name = fold(alias), normalize_prompt(name)
            if form and name in known and form not in by_fold and form not in countries:
                by_alias.setdefault(form, set()).add(name)
        # An ambiguous form ("keycap: #" and "keycap: *" both fold to "keycap") maps to nothing.
        self._lookup = {form: next(iter(group)) for form, group in {**by_alias, **countries, **by_fold}.items()
                        if len(group) == 1}

    def __len__(self) -> int:
        return len(self.names)

    def canonical(self, prompt: str) -> str:
        """The prompt as the model is given it: normalised, then the known name it stands for, if any, also after a
        leading article or determiner ("an astronaut", "the panda" -> the name); else without a leading article
        ("a red car" -> "red car", "some bananas" as typed), nor one after a frame ("a picture of a tree" -> "picture
        of tree", "draw me a cat" -> "draw me cat")."""
        text = normalize_prompt(prompt)
        if not text:
            return text
        found = self._lookup.get(fold(text))
        if found is None:
            found = self._lookup.get(fold(_DETERMINER.sub("", text)))
        framed = _FRAME_ARTICLE.match(text)
        if framed and self._lookup.get(fold(text[framed.end(1):])) is None:  # (not "picture of a button (blood type)")
            text = framed.group(1) + text[framed.end():]
        return found or _ARTICLE.sub("", text)

    @classmethod
    def from_folder(cls, folder: str) -> Optional["CaptionVocabulary"]:
        """The vocabulary of a saved pipeline folder (its captions.txt and held_out.txt); None if it has neither."""
        files: Dict[str, List[str]] = {}
        for file in CAPTION_FILES + (ALIAS_FILE,):
            path = os.path.join(folder, file)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    files[file] = [line.strip() for line in f if line.strip()]
        aliases = dict(line.split("\t", 1) for line in files.pop(ALIAS_FILE, []) if "\t" in line)
        return cls([n for lines in files.values() for n in lines], files, aliases) if files else None

    def save(self, folder: str) -> None:
        """Writes the files it was read from (all names as captions.txt if it was built from a list)."""
        files = dict(self.files or {"captions.txt": self.names})
        if self.aliases:
            files[ALIAS_FILE] = [f"{alias}\t{name}" for alias, name in sorted(self.aliases.items())]
        for file, lines in files.items():
            with open(os.path.join(folder, file), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
