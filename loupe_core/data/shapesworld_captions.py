"""ShapesWorld captions from a small grammar, with the character span of each object phrase.

A caption is ``{"text": str, "refs": [{"span": [start, end], "object": index}]}``: each object
phrase ("a small striped red circle", determiner included) with the scene object it names.
Styles: "relation" ("a red circle to the left of a big blue star"), "list" ("a red circle and a star"),
"there" ("there are ..."), "prefix" ("a picture of ..."). A caption names some or all objects.
"""
from __future__ import annotations

import numpy as np

STYLES = ("relation", "list", "there", "prefix")
SIZE_WORDS = {"small": ("small", "tiny"), "large": ("large", "big")}
PREFIXES = ("a picture of ", "an image of ", "a scene with ")


def relation(a: dict, b: dict) -> str:
    """Where object ``a`` lies relative to ``b``: the dominant axis of their centre offset."""
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def object_phrase(obj: dict, rng: np.random.Generator, det: str = "a", full: bool = False,
                  colour: bool = False) -> str:
    """"a small striped red circle": the shape always, other attributes by chance (all if ``full``;
    the colour always if ``colour``)."""
    words = []
    if full or rng.random() < 0.4:
        options = SIZE_WORDS[obj["size"]]
        words.append(options[int(rng.integers(len(options)))])
    if obj["striped"] and (full or rng.random() < 0.7):
        words.append("striped")
    if full or colour or rng.random() < 0.9:
        words.append(obj["colour"])
    words.append(obj["shape"])
    if det == "a" and words[0][0] in "aeiou":
        det = "an"
    return " ".join([det] + words)


class _Builder:
    """Concatenates caption pieces and records where each object phrase lands."""

    def __init__(self):
        self.text, self.refs = "", []

    def add(self, piece: str) -> "_Builder":
        self.text += piece
        return self

    def phrase(self, piece: str, obj_index: int) -> "_Builder":
        self.refs.append({"span": [len(self.text), len(self.text) + len(piece)], "object": obj_index})
        return self.add(piece)

    def listing(self, phrases: list[tuple[str, int]]) -> "_Builder":
        for pos, (piece, idx) in enumerate(phrases):
            if pos:
                self.add(" and " if pos == len(phrases) - 1 else ", ")
            self.phrase(piece, idx)
        return self

    def finish(self, rng: np.random.Generator) -> dict:
        text = self.text + ("." if rng.random() < 0.5 else "")
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:]
        return {"text": text, "refs": self.refs}


def make_caption(scene: dict, rng: np.random.Generator, style: str | None = None) -> dict:
    """One caption of ``scene`` in ``style`` (random when None; "relation" needs two objects)."""
    objects = scene["objects"]
    if style is None:
        style = STYLES[int(rng.integers(len(STYLES)))]
    if style not in STYLES:
        raise ValueError(f"style must be one of {list(STYLES)}, got {style!r}")
    if style == "relation" and len(objects) < 2:
        style = "list"
    order = [int(i) for i in rng.permutation(len(objects))]
    b = _Builder()
    if style == "relation":
        i, j = order[:2]
        b.phrase(object_phrase(objects[i], rng), i).add(f" {relation(objects[i], objects[j])} ")
        return b.phrase(object_phrase(objects[j], rng), j).finish(rng)
    chosen = order[:int(rng.integers(1, len(objects) + 1))]
    phrases = [(object_phrase(objects[i], rng), i) for i in chosen]
    if style == "there":
        b.add("there is " if len(phrases) == 1 else "there are ")
    elif style == "prefix":
        b.add(PREFIXES[int(rng.integers(len(PREFIXES)))])
    return b.listing(phrases).finish(rng)


def referring_sentences(scene: dict, target: int, rng: np.random.Generator) -> list[str]:
    """Expressions that single out object ``target``: "the red circle" (colour and shape are unique
    within a scene) and, with a second object, "the red circle above the blue star"."""
    objects = scene["objects"]
    own = object_phrase(objects[target], rng, det="the", colour=True)
    sentences = [own]
    others = [i for i in range(len(objects)) if i != target]
    if others:
        other = others[int(rng.integers(len(others)))]
        sentences.append(f"{own} {relation(objects[target], objects[other])} "
                         f"{object_phrase(objects[other], rng, det='the', colour=True)}")
    return sentences
