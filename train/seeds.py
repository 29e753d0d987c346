"""Several seeds in one command (``train --seeds 0,1,2``): one run folder per seed, named
``<out>-s<seed>``, trained one after another. ``--view-seeds 0,1`` does the same over draws of
the observed labels (``<out>-v<draw>``; both: ``<out>-s<seed>-v<draw>``), so the report can
set the variance over training seeds apart from the variance over label draws. The report and
the leaderboard group seeds; ``--resume`` resumes the folders that hold a run and starts the
others."""

from __future__ import annotations

import dataclasses
from typing import Any

from shards.base.errors import WsmlError
from shards.base.options import SEED
from train.config import RunConfig
from train.runfolder import RunFolder

RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def parse_seeds(text: str | None) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); distinct non-negative integers."""
    if text is None:
        return ()
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise WsmlError(
            f"--seeds takes comma-separated integers like 0,1,2, got {text!r}"
        ) from None
    if not seeds or any(s not in SEED for s in seeds) or len(set(seeds)) != len(seeds):
        raise WsmlError(f"--seeds takes distinct integers {SEED} like 0,1,2, got {text!r}")
    return seeds


def grid_folder(base: str, seed: int | None, draw: int | None) -> str:
    """``OUT-s<seed>``, ``OUT-v<draw>`` or ``OUT-s<seed>-v<draw>``."""
    return base + ("" if seed is None else f"-s{seed}") + ("" if draw is None else f"-v{draw}")


def create_grid_configs(
    options: dict[str, Any], method_options: dict[str, str], seeds: tuple[int, ...],
    draws: tuple[int, ...],
) -> list[RunConfig]:  # fmt: skip
    """One config per training seed x label draw (``--seeds`` x ``--view-seeds``), each in its
    own folder. With ``--resume``, a folder that holds a run resumes it and one that does not
    starts afresh, with the command's options or, where it gives none, a sibling run's."""
    from train.run import create_run_config

    base = (
        options.get("out") or f"runs/{options.get('method')}-{options.get('setting') or 'linear'}"
    )
    if options.get("resume") and not options.get("out"):
        raise WsmlError("--resume with --seeds or --view-seeds needs --out (the folders' stem)")
    cells = [(s, d) for s in seeds or (None,) for d in draws or (None,)]
    folders = {cell: grid_folder(base, *cell) for cell in cells}
    saved = {c: RunFolder(f).read_config() if options.get("resume") else None
             for c, f in folders.items()}  # fmt: skip
    sibling = next((s for s in saved.values() if s is not None), None)
    configs = []
    for (seed, draw), folder in folders.items():
        opts = {**options, "out": folder, "seed": options.get("seed") if seed is None else seed}
        mine = dict(method_options)
        fresh = saved[(seed, draw)] is None
        if fresh:
            opts["resume"] = False
            if sibling is not None:  # settings the command left out: a sibling run's
                skip = {"out", "seed", "method_options", *(("regime",) if draws else ())}
                for key, value in sibling["run"].items():
                    if key in RUN_FIELDS and key not in skip and opts.get(key) is None:
                        opts[key] = value
                mine = {**sibling["run"].get("method_options", {}), **mine}
        config = create_run_config(opts, mine, progress=True)
        if fresh and draw is not None:
            config = with_view_draw(config, draw)
        configs.append(config)
    return configs


def with_view_draw(config: RunConfig, draw: int) -> RunConfig:
    """``config`` on draw ``draw`` of its observed labels (draw 0: the view itself)."""
    from shards.shardset import open_shard_set
    from train.methods import get_method
    from train.plan import choose_view

    ss = open_shard_set(config.shards)
    view, _ = choose_view(ss, get_method(config.method), config.regime, config.fraction)
    return dataclasses.replace(config, regime=draw_view(ss, view, draw))


def draw_view(ss, view: str, draw: int) -> str:
    """The view of label draw ``draw`` of ``view``: the same regime and parameters with the
    seed moved by ``draw`` (single-positive draw 0 is Cole et al.'s seed 1200, draw 1 seed
    1201, …); it must exist (``cli.py observe`` makes it: views never change the tars)."""
    from shards.regimes import create_regime

    if draw == 0:
        return view
    meta = ss.regimes.get(view)
    if meta is None or "seed" not in (meta.get("params") or {}):
        raise WsmlError(
            f"--view-seeds draws the observed labels again, and the {view!r} labels are not "
            "drawn; give --regime a drawn view (single-positive, partial, noisy)"
        )
    params = {**meta["params"], "seed": meta["params"]["seed"] + draw}
    name = create_regime(meta["regime"], **params).view_name()
    if name not in ss.regimes:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(params.items())
                         if k not in ("seed", "class_weights"))  # fmt: skip
        weights = " --class-weights FILE (the view's)" if params.get("class_weights") else ""
        raise WsmlError(
            f"label draw {draw} of {view} is the view {name}, which {ss.root} does not have: "
            f"make it with `cli.py observe {ss.root} {meta['regime']} --seed {params['seed']} "
            f"{flags}{weights}`"
        )
    return name
