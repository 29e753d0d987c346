"""Reading run folders for the leaderboard and the report: every folder holding a wsml run's
``config.json`` under the given directories (not inside another run: a sweep's ``members/``
belong to it), finished or not, with what could not be read named instead of raised."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.base.errors import WsmlError

FORMAT = "wsml-run"


@dataclass
class RunInfo:
    """One run folder: its saved config and summary, its metrics lines, and where it stands."""

    path: Path
    config: dict
    summary: dict | None
    metrics: list[dict]
    finished: bool

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def epoch(self) -> int:
        """Epochs trained (the summary's count, else the metrics lines')."""
        s = self.summary or {}
        return int(s.get("epochs_trained") or len(self.metrics))

    @property
    def curve_metrics(self) -> list[dict]:
        """Per-epoch lines of the run, or of a sweep's chosen member (its own run's lines)."""
        chosen = (self.summary or {}).get("chosen")
        if chosen:
            lines, _ = read_metrics(self.path / "members" / chosen)
            return lines
        return self.metrics

    @property
    def predictions_dir(self) -> Path:
        return self.path / "predictions"

    @property
    def provenance(self) -> dict[str, Any]:
        return self.config.get("provenance") or {}

    @property
    def data_id(self) -> str:
        """The identity of the shard set it trained on (its manifest's sha256, the same for a
        copy in another folder); a run recorded before identities: its dataset's name."""
        manifest = (self.config.get("data") or {}).get("manifest.json")
        return manifest or f"dataset {self.config.get('dataset')}"

    @property
    def table_title(self) -> str:
        """The shard set's own name and its converter, e.g. ``digits (coco)``."""
        saved = self.provenance.get("shard_set") or {}
        shards = (self.config.get("run") or {}).get("shards")
        name = saved.get("name") or (Path(shards).name if shards else None)
        converter = self.config.get("dataset")
        if not name or name == converter:
            return str(converter)
        return f"{name} ({converter})"

    def identity(self) -> str:
        """What makes two folders the same run: the data's hashes, the run's settings (its
        seed included, its folder and the shard set's path not), method config and view."""
        run = {
            k: v for k, v in (self.config.get("run") or {}).items() if k not in ("out", "shards")
        }
        data = {k: v for k, v in (self.config.get("data") or {}).items() if k.endswith(".json")}
        parts = [data or self.data_id, run, self.config.get("method"), self.config.get("regime")]
        return json.dumps(parts, sort_keys=True, default=str)

    def lrs_used(self) -> list[dict[str, float]] | None:
        """Each logged epoch's lr per optimiser group (a sweep: its chosen member's); [] for a
        method that trains nothing (epoch 0 logs none); None when the lines log no lr."""
        out = []
        for line in self.curve_metrics:
            lrs = line.get("lr")
            if isinstance(lrs, dict):
                out.append({k: v for k, v in lrs.items() if isinstance(v, (int, float))})
        if not out:
            return None
        return [] if not any(out) else [x for x in out if x]

    def key(self) -> dict[str, Any]:
        """The fields seeds are grouped by, and the run's own (seed, lr, batch)."""
        s, run = self.summary or {}, self.config.get("run", {})
        hyper = self.config.get("method", {})
        setting = s.get("setting") or run.get("setting") or ""
        linear = str(setting).startswith("linear")
        if run.get("sweep") and setting == "linear":
            setting = "linear-sweep"
        inputs = run.get("features") if linear else run.get("backbone")
        if not linear and run.get("weights") == "none":
            inputs = f"{inputs} (random init)"
        if run.get("clip") and run.get("clip") != run.get("features"):
            inputs = f"{inputs} + {run['clip']}"  # a CLIP cache of its own (vlpl, aevlp)
        saved = self.config.get("regime")  # the resolved view, {"view", "kind"}
        regime = s.get("regime") or (saved or {}).get("view") or run.get("regime") or "?"
        return {
            "data": self.data_id,
            "table": self.table_title,
            "dataset": s.get("dataset") or self.config.get("dataset"),
            "regime": regime,
            "kind": (saved or {}).get("kind") or ("full" if regime == "full" else regime),
            "setting": setting,
            "inputs": inputs,
            "method": s.get("method") or run.get("method"),
            "seed": s.get("seed", run.get("seed")),
            "lr": s.get("lr", hyper.get("lr")),  # a sweep's chosen member, else the run's
            "batch": s.get("batch_size", hyper.get("batch_size")),
        }


@dataclass
class RunSet:
    runs: list[RunInfo]
    problems: list[str] = field(default_factory=list)  # what was skipped, and why

    @property
    def finished(self) -> list[RunInfo]:
        return [r for r in self.runs if r.finished]

    @property
    def unfinished(self) -> list[RunInfo]:
        return [r for r in self.runs if not r.finished]


def read_runs(folders: list[str | Path]) -> RunSet:
    """Every run under ``folders``; an error when a folder is missing or holds no run."""
    found = RunSet([])
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise WsmlError(f"{root} is not a folder of runs")
        paths = list_run_folders(root)
        if not paths:
            raise WsmlError(f"{root} holds no run (no folder with a wsml config.json)")
        for path in paths:
            run = read_run(path, found.problems)
            if run is not None:
                found.runs.append(run)
    return found


def list_run_folders(root: Path) -> list[Path]:
    """Folders holding a config.json of a wsml run, in name order, not descending into one."""
    out = []
    for here, dirs, files in os.walk(root):
        dirs.sort()
        if "config.json" in files and _is_run(Path(here) / "config.json"):
            out.append(Path(here))
            dirs.clear()
    return out


def _is_run(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_run(path: Path, problems: list[str]) -> RunInfo | None:
    config = json.loads((path / "config.json").read_text())
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except ValueError as e:
            problems.append(f"{path / 'summary.json'}: not valid JSON ({e}); run skipped")
            return None
    metrics, bad = read_metrics(path)
    problems += bad
    finished = summary is not None and summary.get("finished", True) is not False
    return RunInfo(path, config, summary, metrics, finished)


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """metrics.jsonl's lines, and a problem for each line that is not a JSON object."""
    file = path / "metrics.jsonl"
    if not file.is_file():
        return [], []
    lines, bad = [], []
    for number, text in enumerate(file.read_text(errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if not isinstance(line, dict) or "epoch" not in line:
                raise ValueError("not an object with an epoch")
            lines.append(line)
        except ValueError as e:
            bad.append(f"{file} line {number}: unreadable ({e}); skipped")
    return lines, bad
