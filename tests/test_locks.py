"""One writer per folder, whatever path names it: a symlink to a run folder, a path through
``..`` or a symlinked parent all take the lock of the folder they resolve to, so a second
writer (``--overwrite`` included) is refused at once instead of interleaving its files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from shards.base.errors import WsmlError
from shards.base.fileio import folder_lock, lock_path_for
from tests import test_run_integrity
from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.raw_datasets import make_coco
from tests.support.train_fixtures import FEAT, get_shards

held = test_run_integrity.held  # the fixture: another process holding a folder's lock


def aliases(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A folder ``runs/a7`` and three other names of it."""
    real = tmp_path / "runs" / "a7"
    real.parent.mkdir()
    (tmp_path / "runs" / "latest").symlink_to("a7")
    (tmp_path / "linked").symlink_to(tmp_path / "runs")
    (tmp_path / "runs" / "sub").mkdir()
    others = [tmp_path / "runs" / "latest", tmp_path / "linked" / "a7", real.parent / "sub/../a7"]
    return real, others


def test_every_name_of_a_folder_takes_one_lock(tmp_path):
    real, others = aliases(tmp_path)
    assert {lock_path_for(p) for p in others} == {lock_path_for(real)}
    with folder_lock(real):
        for other in others:
            with pytest.raises(WsmlError, match="being written by another process"):
                with folder_lock(other):
                    pass
    assert not lock_path_for(real).exists()


def test_a_lock_through_a_symlink_names_the_folder_it_resolves_to(tmp_path, held):
    real, (latest, *_) = aliases(tmp_path)
    pid = held(latest)
    with pytest.raises(WsmlError) as e:
        with folder_lock(real):
            pass
    assert f"pid {pid}" in str(e.value) and str(real) in str(e.value)


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_second_train_through_a_symlink_is_refused(tmp_path_factory, tmp_path, held, extra):
    shards = get_shards(tmp_path_factory)
    real, (latest, *_) = aliases(tmp_path)
    pid = held(real)
    args = ["train", "--shards", shards, "--method", "an", "--features", FEAT, "--out", latest]
    result = CliRunner().invoke(cli.main, [str(a) for a in [*args, *extra]])
    assert_refused(result, str(latest), f"pid {pid}")
    assert not real.exists()


def test_a_second_shard_through_a_symlink_is_refused(tmp_path, held):
    root = make_coco(tmp_path / "coco", n_train=8, n_val=4)
    real, (latest, linked, _) = aliases(tmp_path)
    pid = held(linked)
    for out in (real, latest):
        assert_refused(shard_cli(root, out, "--overwrite"), str(out), f"pid {pid}")
    assert not real.exists()


def test_observe_is_refused_while_another_process_writes_the_shard_set(tmp_path, held):
    """A view added while another command writes the set (a ``shard --overwrite``, another
    ``observe``) is refused before anything is written, naming the holder."""
    root = make_coco(tmp_path / "coco", n_train=8, n_val=4)
    real, (latest, *_) = aliases(tmp_path)
    assert shard_cli(root, real).exit_code == 0
    pid = held(real)
    args = ["observe", str(latest), "partial", "--fraction", "0.5"]
    assert_refused(CliRunner().invoke(cli.main, args), str(latest), f"pid {pid}")
    assert not (real / "observed" / "partial-p0.5").exists()
    assert sorted(p.name for p in (real / "observed").iterdir()) == ["single-positive"]


def test_a_symlink_to_a_folder_not_made_yet_is_written_through(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=8, n_val=4)
    real, (latest, *_) = aliases(tmp_path)
    result = shard_cli(root, latest)
    assert result.exit_code == 0, result.output
    assert (real / "manifest.json").is_file() and latest.is_symlink()
    assert not lock_path_for(real).exists()
