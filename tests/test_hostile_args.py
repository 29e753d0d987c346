"""Every command, run with hostile arguments (numbers out of range, NaN and infinities, huge
integers, non-UTF-8 paths and text, files in another encoding, unknown devices), ends with
exit 0, 1 or 2 and never prints a traceback. The commands come from walking the click group,
so a new command is covered, or this test fails until it has a base invocation below."""

from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from shards.base.clitools import DeviceType
from shards.convert.convert import convert
from shards.synth.digits import write_demo_data
from tests.support.raw_datasets import make_coco, write_jpeg

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BAD_TEXT = os.fsdecode(b"bad-\xff")  # what Python makes of an undecodable byte in argv
HUGE = "99999999999999999999"
# cases left out of the hostile walk, (command, option): none now
LEFT_OUT: set[tuple[str, str]] = set()


def walk(cmd: click.Command, path: str = ""):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from walk(sub, f"{path} {name}".strip())
    else:
        yield path, cmd


COMMANDS = dict(walk(cli.main))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A raw COCO dataset, a shard set with the tiny CLIP cache, a scratch copy for commands
    that write into one, a linear and an e2e run, loose images and files in latin-1."""
    import shutil

    import torch

    from models.backbones import create_backbone
    from models.cache import cache_clip
    from train.config import RunConfig
    from train.run import train

    base = tmp_path_factory.mktemp("hostile")
    raw = make_coco(base / "raw", n_train=8, n_val=4)
    write_demo_data(base / "demo", n_train=40, n_val=20, size=32)
    sh = base / "shards"
    convert("coco", base / "demo", sh, {}, {}, workers=1, fsync=False)
    cache_clip(sh, model="wsml-tiny-clip", pretrained="none", device="cpu", backend="torch")
    tag = "wsml-tiny-clip__none"
    backbone, _ = create_backbone("test_resnet", weights="none")
    torch.save(backbone.state_dict(), base / "resnet.pt")
    common = dict(shards=str(sh), loader="torch", method_options={"epochs": "1"})
    runs = {
        "linear": RunConfig(method="an", features=tag, **common),
        "e2e": RunConfig(method="an", setting="e2e", backbone="test_resnet", weights="none",
                         image_size=32, **common),
    }  # fmt: skip
    for name, config in runs.items():
        train(RunConfig(**{**config.__dict__, "out": str(base / "runs" / name)}))
    for k in range(2):
        write_jpeg(base / "images" / f"{k}.jpg", seed=k)
    latin = base / "latin1.txt"
    latin.write_bytes('{"caf\xe9": 1}\n'.encode("latin-1"))
    scratch = Path(shutil.copytree(sh, base / "scratch"))
    return {"raw": raw, "shards": sh, "scratch": scratch, "runs": base / "runs",
            "linear": base / "runs" / "linear", "e2e": base / "runs" / "e2e",
            "images": base / "images", "weights": base / "resnet.pt", "latin": latin,
            "tag": tag, "tmp": base / "out"}  # fmt: skip


def bases(s: dict) -> dict[str, dict]:
    """A valid, quick invocation of every command, by parameter name (``{out}``: a fresh path
    per invocation)."""
    return {
        "shard": {"dataset": "coco", "root": s["raw"], "out": "{out}", "workers": 1},
        "observe": {"shards_dir": s["scratch"], "regime": "partial", "fraction": 0.5},
        "info": {"shards_dir": s["shards"]},
        "verify": {"shards_dir": s["shards"], "workers": 1, "no_decode": True},
        "audit": {"shards_dir": s["scratch"], "workers": 1, "no_decode": True},
        "demo-data": {"out": "{out}", "n_train": 4, "n_val": 2},
        "cache-clip": {"shards_dir": s["scratch"], "model": "wsml-tiny-clip", "pretrained": "none",
                       "device": "cpu", "loader": "torch"},
        "cache-features": {"shards_dir": s["scratch"], "backbone": "test_resnet",
                           "weights": s["weights"], "preset": "backbone", "image_size": 32,
                           "device": "cpu", "loader": "torch"},
        "train": {"shards": s["shards"], "method": "an", "features": s["tag"], "epochs": 1,
                  "out": "{out}"},
        "eval": {"run_dir": s["linear"]},
        "leaderboard": {"runs_dir": s["runs"]},
        "report": {"runs_dirs": s["runs"], "out": "{out}"},
        "methods": {},
        "predict": {"images": s["images"], "run_dir": s["e2e"], "out": "{out}.csv"},
        "export": {"run_dir": s["e2e"], "out": "{out}.pt"},
        "bench docs": {"tables": "shard-3000", "doc": str(DOC), "dry_run": True},
        "bench shard": {"images": 8, "workers": 1, "rss_sizes": "0", "workdir": "{out}"},
        "bench openimages-labels": {"sizes": "50", "labels": 2, "classes": 10,
                                    "workdir": "{out}"},
        "bench loader": {"shards_dir": s["shards"], "batch_size": 4, "repeats": 1,
                         "no_profile": True, "threads": 1, "device": "cpu",
                         "preset": "clip224"},
        "bench cache-clip": {"shards_dir": s["shards"], "models": "wsml-tiny-clip",
                             "pretrained": "none", "batch_size": 4, "device": "cpu",
                             "loader": "torch"},
        "bench predict": {"shards_dir": s["shards"], "images": 64, "backbone": "test_resnet",
                          "weights": s["weights"], "image_size": 32, "batch_size": 4,
                          "repeats": 1},
        "bench train": {"setting": "linear", "rows": "64,16,16", "dim": 8, "classes": 4,
                        "ways": "runs", "lrs": "0.01", "batches": "8"},
    }  # fmt: skip


def hostile_values(p: click.Parameter, s: dict) -> list:
    t = p.type
    if isinstance(t, click.IntRange):  # bounded (test_every_number_option_is_bounded)
        return [t.min - 1, t.max + 1, HUGE]
    if isinstance(t, click.FloatRange):
        return [t.min - (0 if t.min_open else 1), t.max * 10, "nan", "inf", "-inf"]
    if isinstance(t, click.Path):  # undecodable, a file in latin-1, nothing there
        return [s["tmp"] / BAD_TEXT, s["latin"], s["tmp"] / "missing" / "x"]
    if isinstance(t, DeviceType):
        return ["foo", "cuda:7", "cuda"]
    return [BAD_TEXT, "nan", "-1", HUGE, "a=b=c"]


def command_line(cmd: click.Command, values: dict) -> list[str]:
    args = []
    for p in cmd.params:
        if p.name not in values:
            continue
        v = values[p.name]
        if isinstance(p, click.Argument):
            args.append(str(v))
        elif getattr(p, "is_flag", False):
            args += [p.opts[0]] if v else []
        else:
            args += [p.opts[0], str(v)]
    return args


def test_every_number_option_is_bounded():
    """Both ends: a huge count would fork a pool of that many workers or generate that many
    images before anything could refuse it."""
    unbounded = [
        f"{name} {p.opts[0]}"
        for name, cmd in COMMANDS.items()
        for p in cmd.params
        if isinstance(p.type, click.IntRange | click.FloatRange)
        and (p.type.min is None or p.type.max is None)
    ]
    assert unbounded == []


def test_every_command_has_a_base_invocation(setup):
    assert sorted(COMMANDS) == sorted(bases(setup))
    for name, base in bases(setup).items():
        assert set(base) <= {p.name for p in COMMANDS[name].params}, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_hostile_arguments_never_print_a_traceback(setup, name):
    cmd, base = COMMANDS[name], bases(setup)[name]
    failures, n = [], 0
    for p in cmd.params:
        if getattr(p, "is_flag", False) or (name, p.opts[0] if p.opts else p.name) in LEFT_OUT:
            continue
        for value in hostile_values(p, setup):
            n += 1
            fresh = str(setup["tmp"] / f"{name.replace(' ', '-')}-{n}")
            values = {k: str(v).replace("{out}", fresh) for k, v in {**base, p.name: value}.items()}
            values = {k: (v if k != p.name else value) for k, v in values.items()}
            args = name.split() + command_line(cmd, {**values, p.name: value})
            result = CliRunner().invoke(cli.main, [str(a) for a in args])
            crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
            if crashed or "Traceback" in result.output or result.exit_code not in (0, 1, 2):
                shown = repr(result.exception) if crashed else result.output[-300:]
                failures.append(f"{' '.join(map(str, args))!r}: {shown}")
    assert failures == [], "\n".join(failures)


def test_the_hostile_values_reach_each_kind_of_option(setup):
    """The values tried: a range's neighbours, NaN, a huge integer, an undecodable path."""
    train = COMMANDS["train"]
    by_name = {p.name: hostile_values(p, setup) for p in train.params}
    assert by_name["epochs"] == [0, 10_001, HUGE]
    assert by_name["lr"][-3:] == ["nan", "inf", "-inf"]
    assert by_name["out"][0].name == BAD_TEXT
    assert np.all([v in by_name["seeds"] for v in (BAD_TEXT, HUGE)])


@pytest.mark.parametrize("which", ["--root", "--out"])
def test_shard_refuses_a_non_utf8_path_before_any_work(tmp_path, which):
    raw, out = make_coco(tmp_path / "raw", n_train=4, n_val=2), tmp_path / "out"
    bad = tmp_path / BAD_TEXT
    if which == "--root":
        raw.rename(bad)
    args = ["shard", "--dataset", "coco", "--workers", "1"]
    args += ["--root", bad if which == "--root" else raw, "--out", bad if which == "--out" else out]
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"the value of {which}, '{tmp_path}/bad-\\xff', is not valid UTF-8" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["raw" if which == "--out" else BAD_TEXT]
    )


@pytest.mark.parametrize(
    "device, code, said",
    [
        ("foo", 2, "not one of auto, cpu, cuda, cuda:N"),
        ("cuda", 1, "no CUDA GPU; use --device cpu"),
    ],
)
def test_predict_takes_a_device_as_every_command_does(tmp_path, device, code, said):
    write_jpeg(tmp_path / "a.jpg")
    args = ["predict", tmp_path / "a.jpg", "--run", tmp_path / "run", "--device", device]
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == code and "Traceback" not in result.output, result.output
    assert said in result.output


def test_export_into_a_missing_folder_is_refused(setup):
    out = setup["tmp"] / "no-such-folder" / "m.pt"
    result = CliRunner().invoke(cli.main, ["export", "--run", str(setup["e2e"]), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"folder {out.parent} does not exist" in result.output
