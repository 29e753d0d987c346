"""Hand-made run folders for the leaderboard and report tests: config.json, summary.json,
metrics.jsonl and predictions as a run writes them, with chosen numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROTOCOL = {
    "backbone": "resnet50",
    "resolution": 448,
    "val_split": "20% of official train, seed 1200",
}


def write_run(
    folder: Path, method: str, test_map: float, *, setting="linear", dataset="coco2014",
    seed=0, epochs=3, finished=True, summary=True, classes=3, data=None, **extra,
) -> Path:  # fmt: skip
    """A run folder; ``summary=False`` is a run before its first epoch ended. Class i's test AP
    is ``test_map + 10, test_map, test_map - 10`` for i % 3 = 0, 1, 2. ``data``: the shard
    set's manifest hash (default: one per dataset name); its protocol: Cole et al.'s (ResNet-50,
    448 px, 20 % of the official training split for val, seed 1200)."""
    names = [f"c{i}" for i in range(classes)]
    folder.mkdir(parents=True)
    run = {"features": "feat-tag", "backbone": "resnet50", "setting": setting.split("-")[0],
           "method": method, "seed": seed, "shards": str(folder.parent / "shards" / dataset),
           "regime": "single-positive"}  # fmt: skip
    config = {"format": "wsml-run", "run": run, "method": {"lr": 1e-3, "batch_size": 16},
              "dataset": dataset, "classes": names,
              "data": {"manifest.json": data or f"sha256-of-{dataset}"},
              "provenance": {"protocol": {**PROTOCOL, "setting": run["setting"]}}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    lines = [
        {"epoch": e, "train": {"loss": 1.0 / e, "labels/rejected/changed": 10 * e,
                               "labels/rejected/precision": 50.0 + e},
         "val": {"mAP": test_map + e - epochs + 1}, "test": {"mAP": test_map}}
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if summary:
        s = {
            "method": method, "setting": setting, "regime": "single-positive", "dataset": dataset,
            "seed": seed, "best_epoch": epochs, "val": {"mAP": test_map + 1},
            "test": {"mAP": test_map, "CF1": test_map / 2, "OF1": test_map / 3},
            "test_ap": {c: test_map + 10 - 10 * (i % 3) for i, c in enumerate(names)},
            "epochs_trained": epochs, "finished": finished, **extra,
        }  # fmt: skip
        (folder / "summary.json").write_text(json.dumps(s))
        (folder / "predictions").mkdir()
        rng = np.random.default_rng(seed)
        np.save(folder / "predictions" / "test.npy", rng.random((8, classes), dtype=np.float32))
    return folder
