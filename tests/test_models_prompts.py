"""Readable class names for prompts, checked on the real class lists of COCO, VOC, NUS-WIDE,
Open Images and CUB-200-2011 (all 312 attributes)."""

from __future__ import annotations

import csv
import json

import pytest

from models.prompts import DEFAULT_TEMPLATES, readable_class_name


def test_templates_take_one_name():
    assert len(DEFAULT_TEMPLATES) >= 7 and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


@pytest.mark.parametrize(
    "name, readable",
    [
        ("pottedplant", "potted plant"),
        ("diningtable", "dining table"),
        ("tvmonitor", "tv monitor"),
        ("aeroplane", "aeroplane"),
        ("sofa", "sofa"),
        ("potted plant", "potted plant"),
        ("military", "military"),
        ("Sports uniform", "Sports uniform"),
        ("001.Black_footed_Albatross", "Black footed Albatross"),
        ("has_bill_shape::curved_(up_or_down)", "bird with a curved (up or down) bill"),
        ("has_wing_color::blue", "bird with blue wings"),
        ("has_eye_color::black", "bird with black eyes"),
        ("has_bill_color::orange", "bird with an orange bill"),
        ("has_size::small_(5_-_9_in)", "small bird (5 - 9 in)"),
        ("has_shape::duck-like", "duck-like bird"),
        ("has_primary_color::red", "mostly red bird"),
        ("has_tail_shape::fan-shaped_tail", "bird with a fan-shaped tail"),
        ("has_wing_shape::rounded-wings", "bird with rounded wings"),
        ("has_head_pattern::malar", "bird with a malar stripe"),
        ("has_head_pattern::unique_pattern", "bird with a uniquely patterned head"),
        ("has_bill_length::longer_than_head", "bird with a bill longer than its head"),
        ("has_under_tail_color::white", "bird with a white under tail"),
    ],
)
def test_readable_names(name, readable):
    assert readable_class_name(name) == readable


def test_all_cub_attributes_readable(real):
    lines = (real / "cub" / "attributes.txt").read_text().splitlines()
    names = [line.split(" ", 1)[1] for line in lines if line.strip()]
    assert len(names) == 312
    readable = [readable_class_name(n) for n in names]
    assert len(set(readable)) == 312  # no two attributes read the same
    for text in readable:
        assert "::" not in text and "has_" not in text and "_" not in text, text
        assert "bird" in text and "  " not in text, text


def test_cub_species(real):
    lines = (real / "cub" / "CUB_200_2011" / "classes.txt").read_text().splitlines()
    readable = [readable_class_name(line.split(" ", 1)[1]) for line in lines]
    assert readable[0] == "Black footed Albatross"
    assert not any("_" in r or r[0].isdigit() for r in readable)


def test_prose_names_stay(real):
    coco = json.loads((real / "coco" / "annotations" / "instances_val2014_100.json").read_text())
    nus = (real / "nuswide" / "ConceptsList" / "Concepts81.txt").read_text().split()
    with open(real / "openimages" / "2017_11" / "class-descriptions.csv", newline="") as f:
        openimages = [row[1] for row in csv.reader(f)]
    names = [c["name"] for c in coco["categories"]] + nus + openimages
    assert len(names) == 80 + 81 + 19995
    changed = [n for n in names if readable_class_name(n) != n.strip()]
    assert not changed, changed[:10]
