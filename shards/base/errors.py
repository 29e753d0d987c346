"""The project's error type: expected failures (bad input, wrong layout) that the CLI turns
into a one-line ``Error: ...`` with exit code 1, without a traceback."""


class WsmlError(Exception):
    """An expected failure whose message tells the user what is wrong and what was expected."""


# What the operating system said -> what the user can do about it.
OS_ADVICE = {
    "EROFS": "the file system is read-only; choose a writable folder",
    "EACCES": "permission denied; choose a folder you may write to, or fix its permissions",
    "EPERM": "operation not permitted; choose a folder you may write to",
    "ENOSPC": "the disk is full; free space (or choose another disk) and run the command again",
    "EDQUOT": "the disk quota is exhausted; free space and run the command again",
    "EFBIG": "a file size limit was reached (ulimit -f, or the file system's limit)",
}


READ_ADVICE = "permission denied; fix the file's permissions, or run as a user who may read it"


def os_error_message(e: OSError) -> str | None:
    """One line for an operating-system failure the user can act on (read-only folder, no
    permission, full disk), naming the path and whether it could not be read or written; None
    for others (they keep their traceback)."""
    import errno
    import os

    name = errno.errorcode.get(e.errno or 0)
    if name not in OS_ADVICE:
        return None
    where = f" {e.filename}" if e.filename else ""
    path = os.fsdecode(e.filename) if isinstance(e.filename, str | bytes) else ""
    if name in ("EACCES", "EPERM") and os.path.exists(path) and not os.access(path, os.R_OK):
        return f"cannot read{where}: {e.strerror or name} ({name}): {READ_ADVICE}"
    return f"cannot write{where}: {e.strerror or name} ({name}): {OS_ADVICE[name]}"
