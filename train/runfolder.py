"""The run folder: every file written atomically (temporary name, then rename), by rank 0.

```
runs/NAME/
  config.json           the resolved config (run settings, method config, dataset, classes, …)
  metrics.jsonl         one line per epoch: train losses, val/test (and EMA) metrics, times
  summary.csv           the same, one row per epoch with flat column names (train_loss,
                        val_mAP, test_CF1, …), for spreadsheets and pandas (timm's summary.csv)
  summary.json          the selected epoch (best validation mAP), its val and test metrics,
                        per-class test APs
  predictions/{val,test}.npy   probabilities (N, L) float32 of the selected epoch, row order
  checkpoint-last.pt    model, method state, optimizer, EMA, epoch, step, RNG, loop state,
                        config, each rank's training loader state (e2e with DALI: DALI's
                        checkpoint of its graph): what --resume continues from
  checkpoint-best.pt    the same at the selected epoch
```
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards.base.errors import WsmlError
from shards.base.fileio import (
    TMP_SUFFIX,
    dumps_json,
    remove_temporaries,
    removed_on_error,
    tmp_path_for,
    write_bytes_atomic,
    write_json_atomic,
)
from shards.caches import write_array
from train.checkpoints import dumps_checkpoint, read_checkpoint
from train.integrity import check_identity, data_identity

FORMAT = "wsml-run"
VERSION = 1
CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
SUMMARY_CSV = "summary.csv"
LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
PREDICTIONS = "predictions"
MEMBERS = "members"  # a sweep's configurations (train/sweep.py)


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read_config(self) -> dict | None:
        path = self.path / CONFIG
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text())
        except ValueError as e:
            raise WsmlError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise WsmlError(f"{path} is not the config of a wsml run")
        return config

    def check_reuse(self, config: dict, *, resume: bool, overwrite: bool) -> dict | None:
        """Refuse a folder of another dataset, or one holding a run when neither ``resume`` nor
        ``overwrite`` is given; returns the saved config to resume from (else None)."""
        saved = self.read_config()
        if saved is None:
            if resume:
                raise nothing_to_resume(self.path)
            if self.holds_files() and not overwrite:
                raise WsmlError(f"{self.path} exists and is not a run folder; choose another --out")
            return None
        theirs = (saved.get("dataset"), saved.get("classes"))
        if theirs != (config["dataset"], config["classes"]):
            raise WsmlError(
                f"{self.path} holds a run on dataset {saved.get('dataset')!r} "
                f"({len(saved.get('classes') or [])} classes), not {config['dataset']!r} "
                f"({len(config['classes'])} classes) of {config['run']['shards']}; "
                "choose another --out"
            )
        if overwrite:
            return None
        checkpoint, finished = (self.path / LAST).is_file(), self.finished()
        if not resume and (checkpoint or finished):
            way = "--resume to continue it or " if checkpoint else ""
            raise WsmlError(
                f"{self.path} already holds a run{' (finished)' * finished}; pass {way}"
                "--overwrite to start it again"
            )
        if resume:
            differ = [k for k in ("run", "method", "feature_dim") if saved.get(k) != config.get(k)]
            if differ:
                detail = _differences(saved, config, differ)
                raise WsmlError(f"--resume: {self.path} was trained with other settings: {detail}")
            check_identity(self.path, saved, config)
        if not checkpoint and finished:
            raise WsmlError(
                f"--resume: {self.path} holds a finished run without its {LAST}: nothing to "
                "resume; add --overwrite to start it again"
            )
        # stopped before its first checkpoint (killed, a full disk): nothing to keep, and
        # starting again is resuming from epoch 0, with or without --resume
        return saved if checkpoint else None

    def holds_files(self) -> bool:
        """Whether the folder exists and holds files (a killed writer's temporaries aside)."""
        if not self.path.is_dir():
            return self.path.exists()
        return any(not p.name.endswith(TMP_SUFFIX) for p in self.path.iterdir())

    def finished(self) -> bool:
        """Whether the folder holds a run that ended (a sweep's summary is written only then)."""
        try:
            summary = json.loads((self.path / SUMMARY).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(summary, dict) and bool(summary.get("finished") or "chosen" in summary)

    def start(self, config: dict) -> None:
        """A fresh run: clear what a previous one left (--overwrite) and write config.json."""
        self.path.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.path)  # of a writer killed before
        for name in (METRICS, SUMMARY_CSV, SUMMARY, LAST, BEST):
            (self.path / name).unlink(missing_ok=True)
        for sub in (PREDICTIONS, MEMBERS):
            shutil.rmtree(self.path / sub, ignore_errors=True)
        write_json_atomic(self.path / CONFIG, config)

    def read_metrics(self) -> list[dict]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_metrics(self, records: list[dict]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        write_bytes_atomic(self.path / METRICS, text.encode())
        write_bytes_atomic(self.path / SUMMARY_CSV, metrics_csv(records).encode())

    def append_metrics(self, record: dict) -> None:
        self.write_metrics([*self.read_metrics(), record])

    def keep_metrics(self, last_epoch: int) -> None:
        """Drop lines of epochs after ``last_epoch`` (written before an interruption), and the
        temporary files of the writer that was interrupted."""
        remove_temporaries(self.path)
        self.write_metrics([r for r in self.read_metrics() if r["epoch"] <= last_epoch])

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.path / SUMMARY, summary)

    def read_summary(self) -> dict:
        path = self.path / SUMMARY
        if not path.is_file():
            raise WsmlError(f"{self.path} has no {SUMMARY}: the run has not finished an epoch")
        return json.loads(path.read_text())

    def write_predictions(self, split: str, probs: np.ndarray) -> None:
        (self.path / PREDICTIONS).mkdir(exist_ok=True)
        write_array(self.path / PREDICTIONS / f"{split}.npy", probs.astype(np.float32))

    def keep_member_predictions(self, chosen: str) -> None:
        """A sweep's end: the chosen member's test predictions become the sweep's own (its
        selected epoch's); the other members' are removed (one member's are kept, not M)."""
        members = self.path / MEMBERS
        mine = members / chosen / PREDICTIONS
        if mine.is_dir():
            shutil.rmtree(self.path / PREDICTIONS, ignore_errors=True)
            os.replace(mine, self.path / PREDICTIONS)
        for other in members.glob(f"*/{PREDICTIONS}"):
            shutil.rmtree(other, ignore_errors=True)

    def save_checkpoint(self, state: dict[str, Any], best: bool) -> None:
        last = self.path / LAST
        tmp, tmp_best = tmp_path_for(last), tmp_path_for(self.path / BEST)
        with removed_on_error(tmp, last):
            data = dumps_checkpoint(state)
            with open(tmp, "wb") as f:
                f.write(data)
            if best:
                with removed_on_error(tmp_best, self.path / BEST):
                    shutil.copyfile(tmp, tmp_best)
                    os.replace(tmp_best, self.path / BEST)
            os.replace(tmp, last)

    def check_checkpointed(self, saved: dict, which: str = BEST) -> None:
        """A sweep keeps its pick's selected checkpoint only (its members' heads are trained
        stacked): say what to do instead, as ``predict`` and ``export`` do, rather than that a
        file is missing."""
        if not saved["run"].get("sweep"):
            return
        if which != BEST:
            raise WsmlError(
                f"{self.path} is a --sweep run: it keeps its pick's selected epoch only"
            )
        if not (self.path / BEST).is_file():
            raise WsmlError(
                f"{self.path} is a --sweep run that kept no weights (trained before sweeps kept "
                "their pick's): train its chosen member alone (its lr and batch size are in "
                "summary.json) or the sweep again"
            )

    def load_checkpoint(self, which: str = LAST) -> dict:
        """The checkpoint on the CPU, loaded as data only (``train/checkpoints.py``: a shared
        run folder's checkpoint runs no code of its own, or is refused)."""
        path = self.path / which
        if not path.is_file():
            raise WsmlError(f"{path} is missing")
        return read_checkpoint(path)


def selected_weights(ckpt: dict) -> dict:
    """The checkpoint's weights that were selected: its EMA's, or the plain model's (what
    ``eval``, ``predict`` and ``export`` load)."""
    return ckpt["ema"] if ckpt["loop"]["best_weights"] == "ema" else ckpt["model"]


def nothing_to_resume(path: Path) -> WsmlError:
    return WsmlError(
        f"--resume: {path} holds no run (no {CONFIG}): it stopped before it started, or is not "
        "a run folder; start it with the same command without --resume (--shards and --method "
        "given)"
    )


def metrics_csv(records: list[dict]) -> str:
    """metrics.jsonl's lines as CSV: one row per epoch, a column per number (nested keys joined
    with ``_``: ``train_loss``, ``val_mAP``, ``lr_head``), empty where a line lacks it."""
    rows = [dict(_flat(r, "")) for r in records]
    columns = list(dict.fromkeys(["epoch", *(k for row in rows for k in row)]))  # epoch first
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return out.getvalue()


def _flat(obj: dict, prefix: str):
    for key, value in obj.items():
        name = f"{prefix}{key}".replace("/", "_")
        if isinstance(value, dict):
            yield from _flat(value, f"{name}_")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
            yield name, value


def _differences(saved: dict, config: dict, keys: list[str]) -> str:
    out = []
    for key in keys:
        a, b = saved.get(key), config.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(a | b)
                if a.get(k) != b.get(k)
            ]
        else:
            out.append(f"{key}: {a!r} -> {b!r}")
    return "; ".join(out)


def rng_state() -> dict[str, Any]:
    """Every generator's state as plain data (numpy's key as a list of ints, not an array: a
    checkpoint holds tensors and plain data only, train/checkpoints.py)."""
    name, key, *rest = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, key.tolist(), *rest),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, key, *rest = state["numpy"]  # key: a list (an array in older checkpoints)
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if isinstance(cuda, list | tuple):  # checkpoints before 2026-12 saved every device's
        index = torch.cuda.current_device() if torch.cuda.is_available() else len(cuda)
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda.cpu())


def json_safe(obj: Any) -> Any:
    """NaN (a class the OpenImages variant skips) as null; numpy values as plain ones."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


__all__ = ["RunFolder", "dumps_json", "json_safe", "rng_state", "set_rng_state"]


TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    """Fail before any work when ``--tensorboard`` is asked for without the package."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise WsmlError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            '(or pip install -e ".[tensorboard]")'
        ) from None


class TensorBoardLog:
    """Optional TensorBoard event files of a run (``--tensorboard``), in ``<run>/tensorboard``:
    every number of each metrics.jsonl line under its path (``train/loss``, ``val/mAP``,
    ``ema/test/mAP``, ``lr/head``, ``time/train``), at its epoch. A resumed run drops the events
    after the epoch it resumes from (``purge_step``), as it does with metrics.jsonl."""

    def __init__(self, path: Path, resume_epoch: int = 0):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_epoch + 1 if resume_epoch else None
        self.writer = SummaryWriter(str(Path(path) / TENSORBOARD_DIR), purge_step=purge)

    def add(self, record: dict[str, Any], prefix: str = "") -> None:
        epoch = int(record["epoch"])
        for key, value in _numbers(record, prefix):
            if key not in (f"{prefix}epoch", f"{prefix}step", f"{prefix}best_epoch"):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _numbers(obj: Any, prefix: str):
    """(path, value) of every int/float leaf of nested dicts."""
    for key, value in obj.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", float(value)


def check_run_data(
    run_dir: str | os.PathLike, command: str, shards: str | os.PathLike | None = None
) -> None:
    """``eval``, ``predict`` on a shard set and ``export``: refuse a run whose shard set, view
    or caches changed since it trained (the identity ``config.json`` records), as ``--resume``
    does. ``shards``: where the run's shard set is now (moved data), else where it was
    recorded. Nothing to compare where the folder holds no run or its shard set is gone (the
    command then says what it lacks)."""
    from shards.shardset import open_shard_set

    saved = RunFolder(run_dir).read_config()
    if saved is None or "data" not in saved:
        return
    run = saved["run"]
    where = Path(shards if shards is not None else run["shards"])
    if not (where / "manifest.json").is_file():
        return
    view = saved.get("regime", {}).get("view", run.get("regime"))
    now = data_identity(open_shard_set(where), view, run.get("features"), run.get("clip"))
    check_identity(Path(run_dir), saved, {"data": now}, command)
