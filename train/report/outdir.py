"""The report's folder: written beside the old one and swapped in at the end, so a report killed
half-way leaves the old page whole; a folder holding files but no wsml report is refused (unless
``--overwrite``), and files a report did not write are never deleted: they move into the new
folder."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from shards.base.errors import WsmlError
from shards.base.fileio import write_json_atomic

MARKER = "report.json"  # {"format": "wsml-report", "files": [what the report wrote]}
FORMAT = "wsml-report"
RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15)
AT_FDCWD = -100


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse ``out`` when it is a file, or a folder with files but no wsml report in it."""
    if out.exists() and not out.is_dir():
        raise WsmlError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not own_files(out):
        raise WsmlError(
            f"--out {out} holds files but no wsml report; choose another folder, or pass "
            "--overwrite to write the report there (files it did not write are kept)"
        )


def own_files(out: Path) -> set[str]:
    """The names a wsml report wrote in ``out`` (its marker's list; a report written before the
    marker: index.html, report.md and the files the page links); empty where there is none."""
    marker = out / MARKER
    try:
        saved = json.loads(marker.read_text())
        if saved.get("format") == FORMAT:
            return {*saved.get("files", []), MARKER}
    except (OSError, ValueError, AttributeError):
        pass
    page = out / "index.html"
    try:
        text = page.read_text(errors="replace")
    except OSError:
        return set()
    if "<title>wsml report</title>" not in text:
        return set()
    linked = re.findall(r'(?:src|href)="([^"/]+)"', text)
    return {"index.html", "report.md", *linked}


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write the report into; swapped in when the block ends
    without an error (removed when it fails)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    new = out.parent / f".{out.name}.wsml-new-{os.getpid()}"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    publish(new, out)


def publish(new: Path, out: Path) -> None:
    """Mark ``new`` as a report, swap it in for ``out`` (one atomic exchange where the system
    has one), then move what the old report did not write into it and drop the rest."""
    written = sorted(p.name for p in new.iterdir())
    write_json_atomic(new / MARKER, {"format": FORMAT, "files": written})
    if not out.exists():
        os.rename(new, out)
        return
    ours = own_files(out)
    old = exchange(new, out)  # out is the new report now; old holds the previous folder
    for entry in old.iterdir():
        if entry.name not in ours and not (out / entry.name).exists():
            os.rename(entry, out / entry.name)
    shutil.rmtree(old, ignore_errors=True)


def exchange(new: Path, out: Path) -> Path:
    """Swap the two folders' names; returns where the old ``out`` is now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.renameat2(AT_FDCWD, os.fsencode(new), AT_FDCWD, os.fsencode(out),
                              RENAME_EXCHANGE)  # fmt: skip
        if done == 0:
            return new
    except (OSError, AttributeError):
        pass
    old = out.parent / f".{out.name}.wsml-old-{os.getpid()}"
    os.rename(out, old)
    os.rename(new, out)
    return old
