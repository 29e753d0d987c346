"""The command-line helpers the tests share: ``cli.py shard`` through click's runner, and the
check that a command refused its input cleanly (one ``Error:`` line, nothing left behind)."""

from __future__ import annotations

from pathlib import Path


def shard_cli(root: Path, out: Path, *extra: str, dataset: str = "coco"):
    """``cli.py shard`` through click's CliRunner, one worker."""
    from click.testing import CliRunner

    import cli

    args = ["shard", "--dataset", dataset, "--root", str(root), "--out", str(out)]
    return CliRunner().invoke(cli.main, [*args, "--workers", "1", *extra])


def assert_refused(result, *names: str, out: Path | None = None, fresh: bool = True) -> str:
    """exit 1 with a one-line ``Error:`` naming ``names``, no traceback; ``out`` holds no
    manifest, and a fresh ``out`` is not left behind at all. Returns the error line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], f"{name!r} not named in: {errors[0]}"
    if out is not None:
        assert not (out / "manifest.json").exists()
        if fresh:
            assert not out.exists(), f"left behind: {sorted(p.name for p in out.rglob('*'))}"
    return errors[0]
