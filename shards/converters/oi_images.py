"""Where Open Images' image files are: one folder, or several searched in order, as the CVDF
tarballs unpack (``train_0/`` … ``train_f/``, ``validation/``, ``test/``).

``-o images=`` names them comma-separated, each a folder or a glob relative to ``--root``
(``train_*,validation,test``). With several, each folder is listed once (``<ImageID>.jpg``
names as 64-bit ids, 8 bytes an image) and every image is looked up in all of them: one found
in two folders is refused, naming both, since either copy could be the one meant.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import numpy as np

from shards.base.errors import WsmlError

_NAME = re.compile(r"[0-9a-f]{16}\.jpg")


def list_image_folders(root: Path, given: str) -> list[Path]:
    """The folders of ``-o images=``: comma-separated folders or globs under ``root``, in the
    order given (a glob's matches sorted), each once."""
    folders: list[Path] = []
    for part in (p.strip() for p in given.split(",")):
        if not part:
            continue
        if glob.has_magic(part):
            matches = sorted(Path(p) for p in glob.glob(str(root / part)) if os.path.isdir(p))
            if not matches:
                raise WsmlError(f"-o images={given}: no folder under {root} matches {part!r}")
        else:
            matches = [root / part]
            if not matches[0].is_dir():
                raise WsmlError(
                    f"-o images={given}: expected the image folder {part!r} at {matches[0]}, "
                    "but it is not a folder"
                )
        folders += [m for m in matches if m not in folders]
    if not folders:
        raise WsmlError("-o images= is empty; name a folder, several (a,b) or a glob (train_*)")
    return folders


class ImageFolders:
    """Finds each image id's folder among several; each folder is listed at most once."""

    def __init__(self, folders: list[Path]):
        self.folders = [str(f.resolve()) for f in folders]
        self._listed: dict[int, np.ndarray] = {}

    def locate(self, ids: np.ndarray) -> np.ndarray | None:
        """int16 (N,): the folder of each id (the first when none holds it: it is then missing
        there); None with one folder (nothing to look up)."""
        if len(self.folders) == 1:
            return None
        where = np.full(len(ids), -1, np.int16)
        for k in range(len(self.folders)):
            found = np.isin(ids, self._list(k))
            twice = np.flatnonzero(found & (where >= 0))
            if len(twice):
                i = int(twice[0])
                raise WsmlError(
                    f"image {int(ids[i]):016x}.jpg is in two of the -o images= folders, "
                    f"{self.folders[where[i]]} and {self.folders[k]} ({len(twice)} such); "
                    "keep one copy, or leave one folder out"
                )
            where[found] = k
        where[where < 0] = 0
        return where

    def _list(self, k: int) -> np.ndarray:
        if k not in self._listed:
            with os.scandir(self.folders[k]) as entries:
                names = [e.name[:16] for e in entries if _NAME.fullmatch(e.name)]
            self._listed[k] = np.array([int(n, 16) for n in names], dtype=np.uint64)
        return self._listed[k]
