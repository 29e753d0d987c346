"""Reading a shard set: the manifest (a folder without one is incomplete and refused), label
tables, observed views, and the summary ``cli.py info`` prints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from shards import FORMAT_VERSION
from shards.base.errors import WsmlError
from shards.base.fileio import check_inside
from shards.lists import LabelLists
from shards.tables import from_arrow, read_checked_table, read_table


@dataclass(frozen=True)
class ShardSet:
    root: Path
    manifest: dict

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def splits(self) -> list[str]:
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(self.manifest["splits"], key=lambda s: (order.get(s, 9), s))

    def split(self, name: str) -> dict:
        try:
            return self.manifest["splits"][name]
        except KeyError:
            raise WsmlError(
                f"{self.root} has no split {name!r}; splits: {', '.join(self.splits)}"
            ) from None

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / s["tar"] for s in self.split(split)["shards"]]

    def index_paths(self, split: str) -> list[Path]:
        return [self.root / s["index"] for s in self.split(split)["shards"]]

    def label_table(self, split: str, checked: bool = True) -> pa.Table:
        """A split's label table, checked against the manifest's sha256 and row count (unless
        not ``checked``: ``verify`` reads it to report every problem, not the first)."""
        entry = self.split(split)["labels"]
        if not checked:
            return read_table(self.root / entry["path"])
        return read_checked_table(self.root, entry, len(self.classes), "manifest.json")

    def full_labels(self, split: str) -> np.ndarray:
        """int8 (N, L) clean labels in row order: 1 positive, -1 negative, 0 unknown."""
        return self.full_lists(split).dense()

    def full_lists(self, split: str) -> LabelLists:
        """The clean labels in their ragged form (what training and evaluation hold)."""
        return _label_lists(self.label_table(split), len(self.classes))

    def has_unknown(self, split: str) -> bool:
        """Whether the split's clean labels leave entries unknown (Open Images' human labels).
        A source converted with complete labels (every class not positive is a negative) has
        none, known from the manifest without reading its table."""
        if self.manifest.get("complete_labels") is True:
            return False
        return self.full_lists(split).has_unknown()

    def class_groups(self) -> list[str]:
        """The group of every class (VOC's 4, COCO's supercategories, NUS-WIDE's 6, CUB's
        attribute parts), for methods that need a class hierarchy."""
        groups = self.manifest.get("groups")
        if not groups:
            hint = (
                " (Open Images V3's metadata has none: convert with -o hierarchy=FILE, a "
                "V4-style hierarchy json)"
                if self.manifest["dataset"].startswith("openimages")
                else ""
            )
            raise WsmlError(f"{self.root} has no class groups{hint}")
        return groups

    @cached_property
    def regimes(self) -> dict[str, dict]:
        """Complete observed views (those whose regime.json exists), by view name."""
        out = {}
        for meta in sorted((self.root / "observed").glob("*/regime.json")):
            out[meta.parent.name] = doc = json.loads(meta.read_text())
            check_inside(doc, self.root, str(meta))
        return out

    def observed_labels(self, view: str, split: str) -> np.ndarray:
        """int8 (N, L) observed labels of a view in row order (1 / 0 unknown / -1)."""
        return self.observed_lists(view, split).dense()

    @cached_property
    def _observed(self) -> dict[tuple[str, str], LabelLists]:
        return {}

    def observed_lists(self, view: str, split: str) -> LabelLists:
        """The observed labels of a view in their ragged form (read once: the plan checks the
        training split's, the run's data then holds the same)."""
        if view in ("full", "clean"):
            return self.full_lists(split)
        if (view, split) not in self._observed:
            self._observed[view, split] = self._read_observed(view, split)
        return self._observed[view, split]

    def _read_observed(self, view: str, split: str) -> LabelLists:
        if view not in self.regimes:
            have = ", ".join(["full", *self.regimes]) or "none"
            raise WsmlError(
                f"{self.root} has no observed view {view!r}; views: {have}. "
                f"Make one with: cli.py observe {self.root} <regime>"
            )
        entry = self.regimes[view]["splits"].get(split)
        if entry is None:
            raise WsmlError(
                f"observed view {view!r} of {self.root} has no split {split!r} (splits: "
                f"{', '.join(self.regimes[view]['splits'])}); make it again with cli.py observe"
            )
        recorded_in = f"observed/{view}/regime.json"
        table = read_checked_table(self.root, entry, len(self.classes), recorded_in)
        return _label_lists(table, len(self.classes))


# The names the writer owns in a shard set's folder (what ``shard --overwrite`` replaces): tars,
# indexes and temporary files at the top level, and everything in these folders. Other files
# (a README, audit.json, image-hashes/, embeddings/) are left alone.
WRITER_SUFFIXES = (".tar", ".idx", ".wsml-tmp")
WRITER_FOLDERS = ("labels", "observed", "_progress")


def list_unlisted_files(ss: ShardSet) -> list[str]:
    """Files with names the writer owns that neither the manifest nor a view lists (relative
    paths, sorted): another writer's shards, an interrupted ``observe``, a killed writer's
    temporary file. Nothing reads them, but the folder is not what its manifest says."""
    listed = set()
    for name in ss.splits:
        entry = ss.split(name)
        listed.add(entry["labels"]["path"])
        listed.update(x for s in entry["shards"] for x in (s["tar"], s["index"]))
    for meta in ss.manifest["official_splits"].values():
        listed.update(m["path"] for m in (meta["labels"], meta.get("missing_table")) if m)
    for view, meta in ss.regimes.items():
        listed.add(f"observed/{view}/regime.json")
        listed.update(e["path"] for e in meta["splits"].values())
    out = []
    for folder, subs, files in os.walk(ss.root):
        at = Path(folder).relative_to(ss.root)
        if at == Path("."):
            subs[:] = [d for d in subs if d in WRITER_FOLDERS]
            files = [f for f in files if f.endswith(WRITER_SUFFIXES)]
        out += [r for f in files if (r := (at / f).as_posix()) not in listed]
    return sorted(out)


def _label_lists(table: pa.Table, num_classes: int) -> LabelLists:
    return LabelLists(from_arrow(table["positives"]), from_arrow(table["negatives"]), num_classes)


def open_shard_set(path: str | Path) -> ShardSet:
    root = Path(path)
    if not root.is_dir():
        raise WsmlError(f"shard set folder {root} does not exist")
    manifest = root / "manifest.json"
    if not manifest.is_file():
        hint = (
            "its conversion did not finish; run the same cli.py shard command again to resume"
            if (root / "_progress").exists()
            else "expected a folder written by cli.py shard"
        )
        raise WsmlError(f"{root} has no manifest.json: {hint}")
    try:
        m = json.loads(manifest.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise WsmlError(
            f"{manifest} is not valid JSON ({e}); expected one written by cli.py shard"
        ) from None
    if not isinstance(m, dict):
        m = {}
    if m.get("format") != "wsml-shards" or m.get("format_version") != FORMAT_VERSION:
        raise WsmlError(
            f"{manifest} is not a wsml shard set of format version {FORMAT_VERSION} "
            f"(found {m.get('format')} {m.get('format_version')})"
        )
    check_inside(m, root, str(manifest))
    return ShardSet(root, m)


def summarize(ss: ShardSet) -> dict:
    """Counts per split, positives per image, per-class frequencies and regimes present."""
    splits = {}
    for name in ss.splits:
        y = ss.full_labels(name)
        npos = (y == 1).sum(1)
        splits[name] = {
            "images": int(y.shape[0]),
            "shards": len(ss.split(name)["shards"]),
            "bytes": int(sum(s["bytes"] for s in ss.split(name)["shards"])),
            "positives_per_image": {
                "mean": round(float(npos.mean()), 3) if len(npos) else 0.0,
                "min": int(npos.min()) if len(npos) else 0,
                "max": int(npos.max()) if len(npos) else 0,
            },
            "class_frequency": (y == 1).sum(0).astype(int).tolist(),
            "unknown_entries": int((y == 0).sum()),
        }
    official = ss.manifest["official_splits"]
    return {
        "dataset": ss.manifest["dataset"],
        "root": str(ss.root),
        "classes": ss.classes,
        "groups": ss.manifest.get("groups"),
        "splits": splits,
        "regimes": {k: v["params"] for k, v in ss.regimes.items()},
        "official": {
            k: {"listed": v["records"], "present": v["records"] - v["missing_count"]}
            for k, v in official.items()
        },
        "skipped": {k: len(v["skipped"]) for k, v in official.items()},
        "missing": {k: v["missing_count"] for k, v in official.items()},
    }
