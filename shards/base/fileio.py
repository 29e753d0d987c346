"""Atomic file publishing, JSON files, folder locks and file hashes.

Every file of a shard set appears under its final name only once it is complete: it is written
to a temporary name in the same folder, flushed to disk and renamed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".wsml-tmp"


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def publish(tmp: Path, final: Path, durable: bool = True) -> None:
    """fsync ``tmp`` (unless not ``durable``) and rename it to ``final`` (atomic on POSIX)."""
    if durable:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, final)


def fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    tmp = tmp_path_for(path)
    with removed_on_error(tmp, path):
        with open(tmp, "wb") as f:
            f.write(data)
        publish(tmp, path, durable)


@contextmanager
def removed_on_error(tmp: Path, final: Path) -> Iterator[None]:
    """Delete the temporary file ``tmp`` when the block fails (a full disk, a killed write),
    so no half-written file is left; an OS error goes on naming ``final``, the file it was for."""
    try:
        yield
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror, str(final)) from None
        raise


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def read_json(path: Path) -> Any:
    """A JSON file's value (OSError or ValueError when it is missing or not JSON)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json_atomic(path: Path, obj: Any, durable: bool = True) -> None:
    write_bytes_atomic(path, dumps_json(obj).encode(), durable)


PATH_KEYS = ("path", "tar", "index")  # where wsml's JSON files record their files
SOURCE_KEYS = ("skipped", "source")  # where they record the raw dataset's files (never opened)


def leaves_folder(name: str) -> bool:
    """Whether a relative name read from a file (a JSON entry, a list line, a tar member) would
    open something outside its folder: empty, absolute, with a ``..`` part or a NUL byte."""
    return not name or name.startswith("/") or "\0" in name or ".." in name.split("/")


def check_inside(doc: Any, root: Path, where: str) -> None:
    """Every file a wsml JSON file ``doc`` records (the values under ``PATH_KEYS``, at any
    depth, but for the raw dataset's under ``SOURCE_KEYS``) is a relative name inside ``root``:
    a changed or hostile file opens nothing else."""
    from shards.base.errors import WsmlError

    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc if isinstance(doc, list) else ())
    )
    for key, value in items:
        if key in PATH_KEYS and not (isinstance(value, str) and not leaves_folder(value)):
            raise WsmlError(
                f"{where} records {key} {value!r}, not a relative path inside {root}: the file "
                "was changed or not written by wsml"
            )
        if key not in SOURCE_KEYS:
            check_inside(value, root, where)


LOCK_SUFFIX = ".wsml-lock"


def lock_path_for(folder: Path) -> Path:
    """The lock file of ``folder``: beside the folder it resolves to (symlinks and ``..``
    followed), so every name of one folder takes one lock; beside it, so it exists before the
    folder does and never shows among the folder's files."""
    folder = Path(os.path.realpath(folder))
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One writer per folder: an exclusive ``flock`` held for the block by this process, with
    its pid in the lock file. A second writer fails at once naming the folder and the holder,
    whatever name it gives the folder. A symlink to a folder not made yet gets its folder (its
    writers go through the link)."""
    path = lock_path_for(folder)
    target = path.parent / path.name[1 : -len(LOCK_SUFFIX)]
    dangling = Path(folder).is_symlink() and not target.exists()
    made = [p for p in [target] * dangling + list(target.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(path, folder, target):
            if dangling:
                target.mkdir(exist_ok=True)
            yield
    finally:
        for p in made:  # folders made only to hold the lock, left empty by a failed command
            try:
                p.rmdir()
            except OSError:
                break


@contextmanager
def _locked(path: Path, folder: Path, target: Path) -> Iterator[None]:
    from shards.base.errors import WsmlError

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = _read_pid(path)
            named = folder if Path(folder).absolute() == target else f"{folder} (that is {target})"
            raise WsmlError(
                f"{named} is being written by another process (pid {holder}); wait for it "
                "to finish or stop it, or choose another folder"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file its last holder removed meanwhile
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def remove_temporaries(folder: Path) -> int:
    """Delete leftovers of killed writers (``.*.wsml-tmp``) below ``folder``."""
    n = 0
    for p in folder.rglob(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
