"""The words people type for an emoji, from real data, made once at build time into `keywords.txt`.

- **Unicode CLDR emoji annotations** (npm `cldr-annotations-full` and `cldr-annotations-derived-full`,
  `annotations*/en/annotations.json`): the keywords people associate with each emoji ("kitten", "kitty", "pet"
  for the cat face; "coffee", "tea" for the hot beverage; "bike" for the bicycle). The derived file adds the
  sequences (roles, flags).
- **WordNet 3.0** (Debian `wordnet-base`, `/usr/share/wordnet`): the first sense's synonyms of an emoji's name, or
  of the name's head noun ("bicycle" -> "bike", "cycle"; "automobile" -> "car"; "hot beverage" -> "hot drink"), irregular plurals (`noun.exc`: "mice" ->
  "mouse"), and the adjective of a country ("japanese" -> "japan", by WordNet's pertainym pointers) for
  "the Japanese flag".

The table maps a typed head form to every emoji name it stands for: a keyword that names many emoji ("face")
is trained with all of them, and the model draws one. Only the training split's names without a skin tone are
targets (a keyword asks for the default emoji; held-out compositions stay held out). The table ships beside the
weights (as `aliases.txt` does) so that training runs are reproducible; nothing reads CLDR or WordNet at run time.
`scripts/fetch_keyword_sources.sh` downloads both sources into the cache.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterable, List, Optional, Set, Tuple

KEYWORD_FILE = "keywords.txt"  # one "typed<TAB>name" per line, sorted
MEANINGS_FILE = "keyword_meanings.txt"  # "typed<TAB>name<TAB>score": of a keyword's emoji, those WordNet says it means
MEANT = 0.72  # the least similarity (Wu-Palmer) of a keyword to an emoji's head noun for the emoji to be what it means
STRONG = 0.9  # a synonym, or a kind of the head noun ("bunny" -> "rabbit"): strong enough to overrule a name holding it
_WORD = re.compile(r"^[a-z][a-z' -]*[a-z]$")


def strip_variation(chars: str) -> str:
    """An emoji's characters without variation selectors (CLDR and the corpus disagree on U+FE0F)."""
    return chars.replace("\ufe0f", "").replace("\ufe0e", "")


def read_cldr(paths: Iterable[str]) -> Dict[str, List[str]]:
    """CLDR annotation files -> emoji characters (no variation selectors) -> lower-case keywords."""
    out: Dict[str, List[str]] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        section = data.get("annotations") or data.get("annotationsDerived")
        for chars, entry in section["annotations"].items():
            words = [w.lower() for w in entry.get("default", []) + entry.get("tts", [])]
            out.setdefault(strip_variation(chars), []).extend(words)
    return out


class WordNet:
    """The few WordNet 3.0 lookups the table needs, read from its database files."""

    def __init__(self, folder: str):
        self.folder = folder
        self.senses: Dict[str, List[str]] = {}  # noun lemma -> offsets of its synsets, the most frequent first
        with open(os.path.join(folder, "index.noun"), encoding="utf-8") as f:
            for line in f:
                if not line.startswith(" "):
                    parts = line.split()
                    self.senses[parts[0]] = parts[-int(parts[2]):]
        self.first_sense: Dict[str, str] = {lemma: offsets[0] for lemma, offsets in self.senses.items()}
        self.noun_lemmas: Dict[str, List[str]] = self._lemmas("data.noun", needed=set(self.first_sense.values()))
        self.plural_of: Dict[str, str] = {}  # singular -> irregular plural
        with open(os.path.join(folder, "noun.exc"), encoding="utf-8") as f:
            for line in f:
                plural, singular = line.split()[:2]
                self.plural_of.setdefault(singular, plural)

    def _records(self, file: str):
        """Each synset of a WordNet data file: (offset, its words as written, its pointers as (symbol, offset,
        part of speech, source/target))."""
        with open(os.path.join(self.folder, file), encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):  # the license header
                    continue
                parts = line.split("|")[0].split()
                count = int(parts[3], 16)
                k = 4 + 2 * count
                yield (parts[0], [parts[4 + 2 * i] for i in range(count)],
                       [tuple(parts[k + 1 + 4 * p: k + 5 + 4 * p]) for p in range(int(parts[k]))])

    def _lemmas(self, file: str, needed: Optional[Set[str]] = None) -> Dict[str, List[str]]:
        return {offset: [w.lower() for w in words] for offset, words, _ in self._records(file)
                if needed is None or offset in needed}

    def synonyms(self, noun: str) -> List[str]:
        """The other lemmas of the noun's first sense, spaces for underscores ("domestic dog")."""
        offset = self.first_sense.get(noun.replace(" ", "_"))
        lemmas = self.noun_lemmas.get(offset, []) if offset else []
        return [re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in lemmas if w != noun.replace(" ", "_")]

    def _graph(self) -> None:
        """Every noun synset's lemmas and hypernyms (instances too), read once, when a similarity is first asked."""
        if hasattr(self, "_hypernyms"):
            return
        self._hypernyms: Dict[str, List[str]] = {}
        self._all_lemmas: Dict[str, List[str]] = {}
        for offset, words, pointers in self._records("data.noun"):
            self._all_lemmas[offset] = [w.lower() for w in words]
            self._hypernyms[offset] = [o for symbol, o, pos, _ in pointers if symbol in ("@", "@i") and pos == "n"]
        self._ancestors: Dict[str, Dict[str, int]] = {}
        self._depths: Dict[str, int] = {}
        self._singulars = {plural: singular for singular, plural in self.plural_of.items()}

    def _ancestors_of(self, offset: str) -> Dict[str, int]:
        """A synset's ancestors (itself included), each with its least distance."""
        if offset not in self._ancestors:
            out = {offset: 0}
            for parent in self._hypernyms.get(offset, []):
                for ancestor, d in self._ancestors_of(parent).items():
                    out[ancestor] = min(out.get(ancestor, d + 1), d + 1)
            self._ancestors[offset] = out
        return self._ancestors[offset]

    def _depth(self, offset: str) -> int:
        if offset not in self._depths:
            self._depths[offset] = 1 + max((self._depth(p) for p in self._hypernyms.get(offset, [])), default=0)
        return self._depths[offset]

    def wu_palmer(self, a: str, b: str) -> float:
        """Wu & Palmer's similarity of two synsets: 2 depth(deepest common ancestor) / (depth(a) + depth(b))."""
        common = set(self._ancestors_of(a)) & set(self._ancestors_of(b))
        if not common:
            return 0.0
        return 2 * max(self._depth(c) for c in common) / (self._depth(a) + self._depth(b))

    def noun_senses(self, word: str) -> List[str]:
        """The synsets of a noun, the most frequent first; of its singular for a plural ("bunnies" -> "bunny")."""
        self._graph()
        for form in [word, self._singulars.get(word, ""), re.sub(r"ies$", "y", word), re.sub(r"es$", "", word),
                     re.sub(r"s$", "", word)]:
            if form and form.replace(" ", "_") in self.senses:
                return self.senses[form.replace(" ", "_")]
        return []

    def meaning_score(self, word: str, name: str) -> float:
        """How much `word` means the emoji `name`: 1.0 where a sense of the word has the name, or its head, as a
        lemma ("cell" -> "mobile phone", its fifth sense); else the Wu-Palmer similarity of the word's first two
        senses to the name's head noun's ("doctor" / "health worker" 0.74, / "pill" 0.67)."""
        self._graph()
        part, head = name_head(name)
        senses = self.noun_senses(word)
        for offset in senses:
            if {name.replace(" ", "_"), part.replace(" ", "_"), head} & set(self._all_lemmas.get(offset, [])):
                return 1.0
        return max((self.wu_palmer(a, b) for a in senses[:2] for b in self.noun_senses(head)[:2]), default=0.0)

    @staticmethod
    def _names(nouns: Dict[str, List[str]], offsets: Iterable[str]) -> List[str]:
        return [n.replace("_", " ") for offset in offsets for n in nouns.get(offset, [])]

    def country_adjectives(self, countries: Iterable[str]) -> Dict[str, str]:
        """Adjective -> the country it pertains to ("japanese" -> "japan"), for the given country names."""
        wanted = {c.lower(): c for c in countries}
        nouns = self._lemmas("data.noun")
        found: Dict[str, List[str]] = {}
        for _, written, pointers in self._records("data.adj"):
            words = [re.sub(r"\(.*\)$", "", w).lower() for w in written]
            for symbol, offset, pos, source_target in pointers:
                if symbol != "\\" or pos != "n":
                    continue
                # any name of the country's synset: "american" -> "america" = "united states"; else of another
                # synset of one of its names, one that the adjective starts as: "british" -> the island "great
                # britain", also a name of the UK ("britain"); not "anthropic" -> "man" -> the isle of man
                source = int(source_target[:2], 16)  # the adjective's word in its synset
                adjective = words[source - 1] if 0 < source <= len(words) else None
                others = [other for lemma in nouns.get(offset, []) for other in self.senses.get(lemma, [])
                          if adjective and any(len(os.path.commonprefix([adjective, name])) >= 4
                                               for name in self._names(nouns, [other]))]
                countries = [n for n in self._names(nouns, [offset]) if n in wanted] or [
                    n for n in self._names(nouns, others) if n in wanted]
                if countries and adjective and "_" not in adjective:
                    found.setdefault(adjective, []).extend(wanted[c] for c in dict.fromkeys(countries))
        # An adjective can pertain to several synsets ("chinese": China and Taiwan, the Republic of China): the
        # country whose name shares the longest start with it is meant.
        return {adjective: max(names, key=lambda c: len(os.path.commonprefix([adjective, c.lower()])))
                for adjective, names in found.items()}


def plural(word: str, irregular: Optional[Dict[str, str]] = None) -> str:
    """The plural of a noun phrase's last word ("red apple" -> "red apples", "mouse" -> "mice", "fox" -> "foxes")."""
    head, _, last = word.rpartition(" ")
    if irregular and last in irregular:
        form = irregular[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        form = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        form = last[:-1] + "ies"
    else:
        form = last + "s"
    return f"{head} {form}" if head else form


def build_table(names_by_chars: Dict[str, str], cldr: Dict[str, List[str]], wordnet: Optional[WordNet]) -> Dict[str, Set[str]]:
    """typed head form -> the emoji names it stands for. `names_by_chars`: an emoji's characters (no variation
    selectors) -> its caption, for the emoji that may be targets."""
    table: Dict[str, Set[str]] = {}

    def add(typed: str, name: str) -> None:
        typed = " ".join(typed.lower().replace("_", " ").split())
        if _WORD.match(typed) and typed != name:
            table.setdefault(typed, set()).add(name)

    for chars, name in names_by_chars.items():
        heads = [name] + cldr.get(chars, [])
        for head in heads:
            add(head, name)
        if wordnet is not None:  # synonyms of the name, or of its head noun in the name ("hot beverage" -> "hot drink")
            for head in [name] + cldr.get(chars, [])[-1:]:  # the name, and CLDR's own name for the emoji (its tts)
                words = head.split()
                for synonym in wordnet.synonyms(head) or [" ".join(words[:-1] + [s]) for s in wordnet.synonyms(words[-1])]:
                    add(synonym, name)
    for typed, names in list(table.items()):  # plurals of every head form ("kittens", "mice")
        for name in names:
            add(plural(typed, wordnet.plural_of if wordnet else None), name)
    for name in names_by_chars.values():
        add(plural(name, wordnet.plural_of if wordnet else None), name)
    if wordnet is not None:  # "japanese flag" -> "flag: japan"; "english flag" -> "england" (a subdivision's flag)
        flags = {n[len("flag: "):]: n for n in names_by_chars.values() if n.startswith("flag: ")}
        flags.update({n: n for chars, n in names_by_chars.items() if is_subdivision_flag(chars)})
        for adjective, country in wordnet.country_adjectives(flags).items():
            add(f"{adjective} flag", flags[country])
    return table


def name_head(name: str) -> Tuple[str, str]:
    """(the part of an emoji's name that says what it is, its head noun): "people with bunny ears" -> ("people",
    "people") (people, not ears); "rabbit face" -> ("rabbit face", "rabbit") (the animal faces are their animal)."""
    part = re.split(r" with | in | on | behind |: ", name)[0]
    words = part.split()
    head = words[-2] if len(words) >= 2 and words[-1] == "face" else words[-1]
    return part, head


def build_meanings(table: Dict[str, Iterable[str]], wordnet: WordNet) -> Dict[str, Tuple[List[str], float]]:
    """Of each one-word keyword of several emoji, the emoji WordNet says it means: those of the best `meaning_score`,
    where that is at least MEANT ("doctor" -> the health workers, not the pill; "bunny" -> the rabbits, not the
    people with bunny ears; "cell" -> the mobile phone, not the antenna bars)."""
    out: Dict[str, Tuple[List[str], float]] = {}
    for typed, names in table.items():
        names = sorted(names)
        if " " in typed or len(names) < 2:
            continue
        scores = {n: round(wordnet.meaning_score(typed, n), 3) for n in names}
        best = max(scores.values())
        if best >= MEANT:
            out[typed] = ([n for n in names if scores[n] == best], best)
    return out


def write_meanings(meanings: Dict[str, Tuple[List[str], float]], path: str) -> int:
    lines = sorted(f"{typed}\t{name}\t{score:.3f}" for typed, (names, score) in meanings.items() for name in names)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return len(lines)


def read_meanings(path: str) -> Dict[str, Tuple[List[str], float]]:
    """typed -> (the emoji it means, the score); empty where the file is missing (a table made before it)."""
    out: Dict[str, Tuple[List[str], float]] = {}
    if os.path.exists(path):
        for typed, name, score in _rows(path):
            out.setdefault(typed, ([], float(score)))[0].append(name)
    return out


def is_subdivision_flag(chars: str) -> bool:
    """Whether an emoji's characters are a subdivision's flag (a black flag and tag letters: England, Scotland,
    Wales), whose names have no "flag: "."""
    return chars[:1] == "\U0001F3F4" and any(0xE0020 <= ord(c) <= 0xE007F for c in chars)


def flag_adjectives(table: Dict[str, List[str]], flag_names: Iterable[str] = ()) -> List[str]:
    """The country adjectives of the table's flag heads ("japanese flag" -> flag: japan gives "japanese"; not a
    country's own name, such as "burundi"). A flag is a name with "flag: ", or one of `flag_names` ("england")."""
    flags = {t for targets in table.values() for t in targets if t.startswith("flag: ")} | set(flag_names)
    return sorted(head[: -len(" flag")] for head, targets in table.items()
                  if re.fullmatch(r"[a-z]+ flag", head) and targets and all(t in flags for t in targets)
                  and f"flag: {head[: -len(' flag')]}" not in flags and head[: -len(" flag")] not in flags)


def word_frequency():
    """typed -> its Zipf frequency in English (wordfreq: log10 of uses per billion words; "kitten" 3.6, "music"
    5.5, "medico" 2.5), or None without the `wordfreq` package (a build-time tool, not a run-time dependency)."""
    try:
        from wordfreq import zipf_frequency
    except ImportError:
        return None
    return lambda typed: zipf_frequency(typed, "en")


def write_table(table: Dict[str, Set[str]], path: str, frequency=None) -> int:
    """One "typed<TAB>name" line per pair, sorted; with `frequency`, a third column: the typed form's Zipf frequency
    (training draws common words more often: the words people type are the common ones)."""
    zipf = {typed: frequency(typed) for typed in table} if frequency else {}
    lines = sorted(f"{typed}\t{name}" + (f"\t{zipf[typed]:.2f}" if frequency else "")
                   for typed, names in table.items() for name in names)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return len(lines)


def read_table(path: str) -> Dict[str, List[str]]:
    """typed -> the names it stands for."""
    table: Dict[str, List[str]] = {}
    for typed, name, _ in _rows(path):
        table.setdefault(typed, []).append(name)
    return table


def read_frequencies(path: str) -> Dict[str, float]:
    """typed -> its Zipf frequency, where the table has the column (else empty)."""
    return {typed: float(zipf) for typed, _, zipf in _rows(path) if zipf}


def _rows(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and parts[1]:
                yield parts[0], parts[1], parts[2] if len(parts) > 2 else None


def keyword_targets(emojis) -> Dict[str, str]:
    """The emoji a keyword may stand for: the training split's names without a skin tone, by their characters."""
    from .data import code_chars, held_out_split

    held = set(held_out_split(emojis))
    out = {}
    for e in emojis:
        if e.caption in held or "skin tone" in e.caption:
            continue
        out[strip_variation(code_chars(e.code))] = e.caption
    return out


def build_keywords(cldr_dir: str, wordnet_dir: str, out: str) -> int:
    """Writes the keyword table from the CLDR packages' folder and WordNet's; returns its number of lines."""
    from .data import load_emoji

    paths = [os.path.join(cldr_dir, sub, "en", "annotations.json") for sub in ("annotations", "annotationsDerived")]
    cldr = read_cldr(p for p in paths if os.path.exists(p))
    if not cldr:
        raise FileNotFoundError(f"no CLDR annotations under {cldr_dir} (annotations/en/annotations.json); "
                                "run scripts/fetch_keyword_sources.sh")
    wordnet = WordNet(wordnet_dir)
    table = build_table(keyword_targets(load_emoji()), cldr, wordnet)
    write_meanings(build_meanings(table, wordnet), os.path.join(os.path.dirname(out) or ".", MEANINGS_FILE))
    return write_table(table, out, word_frequency())
