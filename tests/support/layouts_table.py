"""Tiny ``table`` sources: images in nested folders and a labels file in the user's own form."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.support.raw_datasets import jpeg_bytes

CLASSES = ("cat", "dog", "car", "tree")


def table_layout(root: Path) -> Path:
    """``labels.csv`` with one column per class (1 / 0 / -1 / blank) and a split column."""
    rows = []
    for i in range(30):
        split = "test" if i >= 24 else "train"
        rel = f"images/{split}/{i // 10}/photo_{i:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpeg_bytes(24 + i % 7, 20 + i % 5, i))
        cells = ["1" if (i + k) % 3 == 0 else ("" if (i * k) % 7 == 3 else "0") for k in range(4)]
        if "1" not in cells:
            cells[i % 4] = "1"
        rows.append([rel, *cells, split])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *CLASSES, "split"])
        w.writerows(rows)
    return root
