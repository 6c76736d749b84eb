"""Offline noun-phrase chunking: caption -> character spans of its noun phrases.

Spec s4 **[choice]**: a tagger plus a chunk grammar replaces the constituency parser. Default:
textblob's ``PatternTagger`` (its lexicon ships inside the package: no download) and an nltk
``RegexpParser`` grammar for base noun phrases. ``backend="spacy"`` uses spaCy noun chunks when
spaCy and an English model are installed (optional; never downloaded).
"""
from __future__ import annotations

import functools
import re

NP_GRAMMAR = r"NP: {<DT|PRP\$|CD>*<JJ.*|VBN|VBG>*<NN.*>+}"
_NOUN_CONTEXT = ("DT", "JJ", "JJR", "JJS", "PRP$", "CD")
_OPENERS = ("DT", "PRP$", "CD")
# tags a tagger gives to the words of a pre-noun modifier ("a close up photo", "a close-up photo",
# "a black and white photo", "a cropped photo", "a very small dog"); IN only for particles
_MODIFIER_TAGS = ("JJ", "JJR", "JJS", "VB", "VBD", "VBN", "VBG", "VBP", "RB", "RBR", "RBS", "RP", "CC", ":", "HYPH")
_PARTICLES = ("up", "down", "out", "off")
_WORD = re.compile(r"\w+(?:[.'\u2019]\w+)*|[^\w\s]")


@functools.lru_cache(maxsize=1)
def _pattern_chunker():
    from nltk import RegexpParser
    from textblob.taggers import PatternTagger

    return PatternTagger(), RegexpParser(NP_GRAMMAR)


@functools.lru_cache(maxsize=1)
def _spacy_model():
    import spacy  # optional dependency

    return spacy.load("en_core_web_sm")


def _words(caption: str) -> list[re.Match]:
    """Words (contractions, possessives and decimals kept whole) and single punctuation marks."""
    return list(_WORD.finditer(caption))


def _retag(tags: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Three repairs of the tagger's output before chunking.

    A verb right after a determiner or adjective is a noun ("a green cross", "two green crosses"); a possessive noun ("dog's") acts as a determiner of
    the phrase it opens ("the dog's red ball"); the modifiers between a determiner and its noun
    are adjectives (``_modifier_runs``).
    """
    out = []
    for word, tag in _modifier_runs(tags):
        prev = out[-1][1] if out else ""
        if tag in ("VB", "VBP", "VBZ") and prev in _NOUN_CONTEXT:
            tag = "NNS" if tag == "VBZ" else "NN"
        if tag.startswith("NN") and word.lower().endswith(("'s", "\u2019s")):
            tag = "PRP$"
        out.append((word, tag))
    return out


def _modifier_runs(tags: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Between a determiner (or possessive, number) and the noun it opens, every word is an
    adjective: a run of modifier tags (``_MODIFIER_TAGS``, particles such as "up") that ends on a
    noun is retagged JJ, so "a close up photo" is one phrase, not "a close" / "photo"."""
    out = list(tags)
    for i, (_, tag) in enumerate(out):
        if tag not in _OPENERS:
            continue
        j = i + 1
        while j < len(out) and (out[j][1] in _MODIFIER_TAGS or
                                (out[j][1] == "IN" and out[j][0].lower() in _PARTICLES)):
            j += 1
        if j > i + 1 and j < len(out) and out[j][1].startswith("NN") and out[i + 1][1] != "CC":
            out[i + 1:j] = [(word, "JJ") for word, _ in out[i + 1:j]]
    return out


def _pattern_phrases(caption: str) -> list[tuple[int, int]]:
    tagger, parser = _pattern_chunker()
    words = _words(caption)
    if not words:
        return []
    tags = _retag(tagger.tag(" ".join(m.group() for m in words), tokenize=False))
    if len(tags) != len(words):  # words hold no spaces, so the tagger keeps them whole
        raise RuntimeError(f"tagger returned {len(tags)} tags for {len(words)} words in {caption!r}")
    tree = parser.parse([(str(i), t) for i, (_, t) in enumerate(tags)])
    phrases = []
    for sub in tree.subtrees(lambda t: t.label() == "NP"):
        leaves = sub.leaves()
        phrases.append((words[int(leaves[0][0])].start(), words[int(leaves[-1][0])].end()))
    return phrases


def _spacy_phrases(caption: str) -> list[tuple[int, int]]:
    return [(c.start_char, c.end_char) for c in _spacy_model()(caption).noun_chunks]


_BACKENDS = {"pattern": _pattern_phrases, "spacy": _spacy_phrases}


def extract_noun_phrases(caption: str, backend: str = "pattern") -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` (end exclusive) of the noun phrases of ``caption``, in order.

    backend: "pattern" (default, offline, always available) or "spacy" (needs spaCy and
    ``en_core_web_sm`` installed). A caption with no noun phrase gives ``[]``.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {list(_BACKENDS)}, got {backend!r}")
    if not caption.strip():
        return []
    return _BACKENDS[backend](caption)
