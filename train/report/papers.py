"""The papers' numbers beside ours (``papers.csv``): a number is shown only where the method,
the dataset family and its number of classes, the regime, the setting and the protocol
(backbone, input resolution, how the validation split was made) all match; where the paper
reports the method on that data under another protocol, the row says "different protocol" and
names the paper's protocol, so a reader never compares numbers of two protocols unawares."""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path
from typing import Any

PAPERS = Path(__file__).with_name("papers.csv")
PROTOCOL = ("backbone", "resolution", "setting", "val_split")
DIFFERENT = "different protocol"


@cache
def read_papers() -> tuple[dict[str, Any], ...]:
    """papers.csv's rows: method, family, classes, regime, setting, mAP, source, then the
    protocol (backbone, resolution, val_split; empty where not recorded)."""
    lines = [line for line in PAPERS.read_text().splitlines() if not line.startswith("#")]
    rows = []
    for r in csv.DictReader(lines):
        r = {k: (v.strip() if isinstance(v, str) else v) for k, v in r.items() if k}
        rows.append({**r, "mAP": float(r["mAP"]), "classes": int(r["classes"])})
    return tuple(rows)


def describe(protocol: dict[str, Any] | None) -> str:
    """``resnet50 448 px, e2e, val 20% of official train, seed 1200``; "not recorded" parts
    where a field is missing."""
    p = protocol or {}
    if not any(p.get(k) for k in PROTOCOL):
        return "not recorded"
    size = f"{p['resolution']} px" if p.get("resolution") else "? px"
    return (f"{p.get('backbone') or '?'} {size}, {p.get('setting') or '?'}, "
            f"val {p.get('val_split') or 'not recorded'}")  # fmt: skip


def same_protocol(paper: dict[str, Any], ours: dict[str, Any] | None) -> bool:
    """Every protocol field recorded on both sides and equal (the setting's ``-sweep`` aside)."""
    if not ours:
        return False
    for key in PROTOCOL:
        theirs, mine = paper.get(key), ours.get(key)
        if key == "setting":
            mine = str(mine or "").split("-")[0]
        if theirs in (None, "") or mine in (None, "") or str(theirs) != str(mine):
            return False
    return True


def get_paper_number(row: dict[str, Any]) -> dict[str, Any] | None:
    """For a leaderboard row (method, dataset, classes, regime, setting, ``protocol``): the
    paper's number where everything matches ({"mAP", "source", "also"}: other papers' numbers
    under the same protocol); {"mAP": None, "note": …} where papers report the method on this
    data under another protocol; None where none does."""
    from train.methods import dataset_family

    family = dataset_family(str(row["dataset"]))
    mine = [row["method"], family, row["classes"], row["regime"]]
    same_data = [p for p in read_papers() if [p[k] for k in ("method", "family", "classes",
                                                             "regime")] == mine]  # fmt: skip
    if not same_data:
        return None
    ours = {**(row.get("protocol_fields") or {}), "setting": row["setting"]}
    matches = [p for p in same_data if same_protocol(p, ours)]
    if matches:
        also = [f"{p['mAP']:.2f} ({p['source']})" for p in matches[1:]]
        return {"mAP": matches[0]["mAP"], "source": matches[0]["source"], "also": also}
    theirs = [f"{p['mAP']:.2f}: {p['source']}; {describe(_protocol_of(p))}" for p in same_data]
    return {"mAP": None, "note": f"ours: {describe(ours)}. Papers: " + " | ".join(theirs)}


def _protocol_of(paper: dict[str, Any]) -> dict[str, Any]:
    return {k: paper.get(k) for k in PROTOCOL}
