"""Prompt templates and readable class names for CLIP text embeddings (no torch import, so a
CLI can list them cheaply)."""

from __future__ import annotations

import re

# A small prompt ensemble in the style of Radford et al. 2021 (CLIP), Sec. 3.1.4.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a good photo of a {}.",
    "a blurry photo of a {}.",
    "there is a {} in the scene.",
)
SINGLE_TEMPLATE: tuple[str, ...] = ("a photo of a {}.",)

# VOC names written as one word
_JOINED = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}
_CUB_ATTRIBUTE = re.compile(r"^has_(?P<what>[a-z_]+)::(?P<value>\S+)$")
_CUB_SPECIES = re.compile(r"^\d{3}\.(?=\S)")  # "001.Black_footed_Albatross"
# body parts as nouns ("has_eye_color::black" -> "black eyes")
_PARTS = {
    "eye": "eyes",
    "leg": "legs",
    "wing": "wings",
    "under_tail": "under tail",
    "upper_tail": "upper tail",
}
_PLURAL = {"eyes", "legs", "wings", "underparts", "upperparts"}
_HEAD_FEATURES = {  # has_head_pattern values that name a mark rather than a pattern
    "malar": "malar stripe",
    "eyebrow": "eyebrow",
    "eyering": "eyering",
    "eyeline": "eyeline",
    "unique_pattern": "uniquely patterned head",
}
_BILL_LENGTH = {
    "about_the_same_as_head": "bill about as long as its head",
    "longer_than_head": "bill longer than its head",
    "shorter_than_head": "bill shorter than its head",
}


def readable_class_name(name: str) -> str:
    """A dataset's class name as prose for prompts: CUB attributes become phrases
    ("bird with a curved (up or down) bill"), joined VOC names split, underscores become spaces."""
    text = name.strip()
    if m := _CUB_ATTRIBUTE.match(text):
        return cub_attribute_phrase(m["what"], m["value"])
    text = _JOINED.get(text, text)
    text = _CUB_SPECIES.sub("", text)
    return _words(text) if "_" in text else text


def cub_attribute_phrase(what: str, value: str) -> str:
    """``has_<part>_<kind>::<value>`` of CUB-200-2011 as a phrase about a bird."""
    words = _words(value)
    if what == "size":  # "small_(5_-_9_in)" -> "small bird (5 - 9 in)"
        size, _, inches = words.partition(" (")
        return f"{size} bird ({inches}" if inches else f"{size} bird"
    if what == "shape":  # "duck-like" / "upright-perching_water-like"
        return f"{words} bird"
    if what == "primary_color":
        return f"{words} bird" if words == "multi-colored" else f"mostly {words} bird"
    part, _, kind = what.rpartition("_")
    if kind not in ("color", "pattern", "shape", "length") or not part:
        return f"bird with {_words(what)}: {words}"
    noun = _PARTS.get(part, _words(part))
    if kind == "length" and part == "bill":
        return "bird with a " + _BILL_LENGTH.get(value, f"{words} bill")
    if kind == "pattern" and part == "head" and value in _HEAD_FEATURES:
        return _with(_HEAD_FEATURES[value])
    if kind == "shape" and part in ("tail", "wing"):  # "forked_tail", "rounded-wings"
        words = re.sub(rf"[ -]{part}s?$", "", words)
    return _with(f"{words} {noun}")


def _with(noun_phrase: str) -> str:
    """'bird with a/an X' for a singular noun, 'bird with X' for a plural one."""
    last = noun_phrase.split()[-1]
    if last in _PLURAL:
        return f"bird with {noun_phrase}"
    vowel = noun_phrase[0] in "aeiou" and not noun_phrase.startswith("uni")  # "a uniquely"
    article = "an" if vowel else "a"
    return f"bird with {article} {noun_phrase}"


def _words(text: str) -> str:
    return " ".join(text.replace("_", " ").split())
