"""Where a result comes from: the code (wsml version, git commit), the date, the full command
line, the data (the shard set's manifest hash, the label view, the caches' tags and hashes), the
machine, and the run's protocol (backbone, resolution, setting, how the validation split was
made). Recorded once per run in ``config.json`` (``provenance``, not compared on ``--resume``);
``report`` prints the runs' and its own."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from shards.base.errors import WsmlError

CHECKOUT = Path(__file__).resolve().parents[1]


def create_provenance(plan) -> dict[str, Any]:
    """The provenance of a run about to start from ``plan`` (a RunPlan with a shard set)."""
    out = describe_invocation()
    ss = plan.shard_set
    if ss is None:
        return out
    data = plan.data or {}
    out["shard_set"] = {
        "path": str(plan.config.shards),
        "name": ss.root.name,
        "converter": ss.manifest.get("dataset"),
        "manifest_sha256": data.get("manifest.json"),
    }
    regime = ss.regimes.get(plan.view) or {}
    out["view"] = {"name": plan.view, "kind": plan.kind, "regime": regime.get("regime"),
                   "params": regime.get("params")}  # fmt: skip
    tags = dict.fromkeys(t for t in (plan.config.features, plan.config.clip) if t)
    out["caches"] = {t: {"meta_sha256": data.get(f"embeddings/{t}/meta.json")} for t in tags}
    try:
        out["protocol"] = describe_protocol(plan)
    except (WsmlError, OSError, KeyError, ValueError):  # never the reason a run fails
        out["protocol"] = None
    return out


def describe_invocation() -> dict[str, Any]:
    """What any command records of itself: code, date, command line, machine."""
    return {
        "wsml": wsml_version(),
        "git": git_state(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": describe_machine(),
    }


def describe_protocol(plan) -> dict[str, Any]:
    """Backbone, input resolution, setting and validation split: what a paper's number must
    share with the run to be compared (train/report/papers.csv has the same fields)."""
    from shards import caches

    config, ss = plan.config, plan.shard_set
    if config.features:
        meta = caches.get_cache(ss.root, config.features)
        backbone, size = meta.get("model"), (meta.get("preprocess") or {}).get("size")
    else:
        from pipelines.presets import PRESETS

        backbone = config.backbone
        size = config.image_size or (PRESETS.get(config.preset).size if config.preset else None)
    return {"backbone": backbone, "resolution": size, "setting": config.setting,
            "val_split": describe_val_split(ss.manifest)}  # fmt: skip


def describe_val_split(manifest: dict) -> str:
    """How a shard set's val split was made: an official split, or a seeded share of the
    official training split (the field's 20 %, seed 1200)."""
    roles = [s.get("role") for s in (manifest.get("official_splits") or {}).values()]
    if "val" in roles:
        return "official val split"
    options = manifest.get("options") or {}
    frac, seed = options.get("val_frac"), options.get("split_seed")
    if frac is None:
        return "unknown"
    return f"{float(frac):.0%} of official train, seed {seed}"


@cache
def wsml_version() -> str:
    try:
        return importlib.metadata.version("wsml")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@cache
def git_state() -> dict[str, Any] | None:
    """The checkout's commit and whether it had uncommitted changes; None outside git."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True,
                              text=True, timeout=10, check=True)  # fmt: skip
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


@cache
def describe_machine() -> dict[str, Any]:
    """CPU and GPU names, cores, OS and Python: what the machine was, not who."""
    out: dict[str, Any] = {"cpu": _cpu_name(), "cores": os.cpu_count(),
                           "os": platform.platform(), "python": platform.python_version()}  # fmt: skip
    torch = sys.modules.get("torch")  # never imported for this alone
    if torch is not None and torch.cuda.is_available():
        out["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
