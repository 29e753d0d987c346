"""What the ``train``, ``eval`` and ``methods`` commands do, so cli.py keeps only their options.

On ``--resume`` the run folder's saved settings are the defaults: ``cli.py train --resume --out
runs/x`` continues a run without repeating its options (options given must match the saved ones).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from shards.errors import WsmlError
from train.config import RunConfig
from train.runfolder import BEST, LAST, RunFolder

# CLI option -> method option (a protocol field every method config has)
METHOD_FLAGS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size"}
RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def build_run_config(
    options: dict[str, Any], method_options: dict[str, str], progress: bool = False
) -> RunConfig:
    """A RunConfig from the command's options (None: not given)."""
    opts = dict(options)
    given_method = dict(method_options)
    for flag, key in METHOD_FLAGS.items():
        value = opts.pop(flag, None)
        if value is not None:
            given_method[key] = repr(value) if isinstance(value, float) else str(value)
    base: dict[str, Any] = {}
    if opts.get("resume") and opts.get("out"):
        saved = RunFolder(opts["out"]).read_config()
        if saved is None:
            raise WsmlError(f"--resume: {opts['out']} holds no run (no config.json)")
        base = {k: v for k, v in saved["run"].items() if k in RUN_FIELDS}
    method_opts = {**base.pop("method_options", {}), **given_method}
    values = {**base, **{k: v for k, v in opts.items() if v is not None and v is not False}}
    values.update(
        resume=bool(opts.get("resume")), overwrite=bool(opts.get("overwrite")), progress=progress
    )
    for name in ("shards", "method"):
        if not values.get(name):
            raise WsmlError(f"--{name} is required (unless --resume finds the run in --out)")
    if "setting" not in values:  # a method with its own model trains end to end
        from train.methods import get_method

        values["setting"] = get_method(values["method"]).settings[0]
    return RunConfig(**values, method_options=method_opts)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_train(config: RunConfig, echo: Callable[[str], None]) -> dict[str, Any]:
    from train.loop import train

    summary = train(config)
    if not is_main_process():
        return summary
    if "interrupted_after_epoch" in summary:
        echo(
            f"stopped after epoch {summary['interrupted_after_epoch']} as asked; continue with "
            f"--resume --out {summary['run']}"
        )
        return summary
    if config.sweep:
        for line in sweep_lines(summary):
            echo(line)
        echo(f"run folder: {config.run_dir}")
        return summary
    why = f", stopped early: {summary['stopped']}" if summary.get("stopped") else ""
    echo(
        f"{summary['method']} on {summary['dataset']} ({summary['setting']}, "
        f"{summary['regime']}): best epoch {summary['best_epoch']} of "
        f"{summary['epochs_trained']}{why} ({summary['weights']} weights)"
    )
    for split in ("val", "test"):
        m = summary[split]
        echo(
            f"  {split:>4} mAP {m['mAP']:6.2f}  CF1 {m['CF1']:6.2f}  OF1 {m['OF1']:6.2f}  "
            f"CP {m['CP']:6.2f}  CR {m['CR']:6.2f}"
        )
    echo(f"run folder: {config.run_dir}")
    return summary


def sweep_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"{'member':<22} {'best epoch':>10} {'val mAP':>8} {'test mAP':>8}"]
    for name, m in summary["members"].items():
        mark = "  <- chosen on val" if name == summary["chosen"] else ""
        lines.append(
            f"{name:<22} {m['best_epoch']:>10} {m['val_mAP']:8.2f} {m['test_mAP']:8.2f}{mark}"
        )
    return lines


def evaluate_run(run_dir: str, split: str, which: str = "best") -> dict[str, Any]:
    """Score a run's checkpoint (the selected epoch's, or the last) on ``split``."""
    from train.context import Context
    from train.evaluate import evaluate_splits
    from train.plan import resolve

    folder = RunFolder(run_dir)
    saved = folder.read_config()
    if saved is None:
        raise WsmlError(f"{run_dir} holds no run (no config.json)")
    ckpt = folder.load_checkpoint(BEST if which == "best" else LAST)
    ctx = Context.create()
    try:
        fields = {k: v for k, v in saved["run"].items() if k in RUN_FIELDS}
        config = RunConfig(**fields, out=run_dir)
        config, resolved, ss = resolve(config, ctx)
        if resolved["classes"] != saved["classes"]:
            raise WsmlError(f"{config.shards} no longer has the classes of {run_dir}")
        model, data = load_model(config, saved, ckpt, ss, ctx)
        results = evaluate_splits({"model": model}, data, ctx, (split,), config.threshold)
        result = results["model"][split]  # by annotated entries where labels are unknown
        result.pop("probs", None)
    finally:
        ctx.close()
    return {"epoch": ckpt["epoch"], "weights": ckpt["loop"]["best_weights"], **result}


def load_model(config: RunConfig, saved: dict, ckpt: dict, ss, ctx):
    """The checkpoint's model (its EMA weights when those were selected) and the data."""
    from train.build import build_model, create_data
    from train.methods import get_method
    from train.model import create_classifier

    info = get_method(config.method)
    mcfg = info.resolve(saved["dataset"], config.method_options)
    if config.setting == "e2e":
        model, _ = build_model(config, dict(saved), ss, info, mcfg, weights="none")
    else:
        model = create_classifier(saved["feature_dim"], len(saved["classes"]), config.seed)
    data = create_data(config, ss, mcfg, ctx, model)
    if config.setting == "linear" and data.feature_dim != saved["feature_dim"]:
        raise WsmlError(
            f"features {config.features!r} have dimension {data.feature_dim}, the run was "
            f"trained on {saved['feature_dim']}"
        )
    weights = ckpt["loop"]["best_weights"]
    model.load_state_dict(ckpt["ema"] if weights == "ema" else ckpt["model"])
    return model.to(ctx.device), data


def eval_lines(result: dict[str, Any], split: str, run_dir: str) -> list[str]:
    return [
        f"{run_dir}: epoch {result['epoch']} ({result['weights']} weights) on {split}: "
        f"mAP {result['mAP']:.2f}  CP {result['CP']:.2f}  CR {result['CR']:.2f}  "
        f"CF1 {result['CF1']:.2f}  OP {result['OP']:.2f}  OR {result['OR']:.2f}  "
        f"OF1 {result['OF1']:.2f}"
    ]


def methods_lines() -> list[str]:
    """One line per registered method: name, regimes, summary; then its paper."""
    from train.methods import METHODS

    lines = []
    width = max(len(m.name) for m in METHODS)
    for m in METHODS:
        flags = [f for f in ("needs_clip", "needs_full") if getattr(m, f)]
        if m.build_model is not None:
            flags.append("own model")
        if m.dense_state:
            flags.append("needs rows x classes memory: not for large label spaces")
        if tuple(m.settings) != ("linear", "e2e"):
            flags.append(f"{'/'.join(m.settings)} only")
        extra = f" [{', '.join(flags)}]" if flags else ""
        lines.append(f"{m.name:<{width}}  {', '.join(m.regimes):<25} {m.summary}{extra}")
        lines.append(f"{'':<{width}}  {m.paper}")
    return lines
