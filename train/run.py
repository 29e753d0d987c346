"""What the ``train``, ``eval`` and ``methods`` commands do, so cli.py keeps only their options.

On ``--resume`` the run folder's saved settings are the defaults: ``cli.py train --resume --out
runs/x`` continues a run without repeating its options (options given must match the saved ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from shards.base.errors import WsmlError
from train.config import RunConfig
from train.runfolder import BEST, LAST, RunFolder, nothing_to_resume
from train.setting_names import SETTINGS

# CLI option -> method option (a protocol field every method config has)
METHOD_FLAGS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size"}
RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def create_run_config(
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
            raise nothing_to_resume(opts["out"])
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


def run_train(config: RunConfig, echo: Callable[[str], None]) -> dict[str, Any]:
    from pipelines.distributed import is_main_process

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

    for line in report_lines(summary):
        echo(line)
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

    folder = RunFolder(run_dir)
    saved = folder.read_config()
    if saved is None:
        raise WsmlError(f"{run_dir} holds no run (no config.json)")
    which = BEST if which == "best" else LAST
    folder.check_checkpointed(saved, which)
    ckpt = folder.load_checkpoint(which)
    ctx = Context.create()
    try:
        plan = plan_saved_run(run_dir, saved, ctx.world_size)
        model, data = load_model(plan, saved, ckpt, ctx)
        results = evaluate_splits({"model": model}, data, ctx, (split,), plan.config.threshold)
        result = results["model"][0][split]  # by annotated entries where labels are unknown
        result.pop("probs", None)
    finally:
        ctx.close()
    return {"epoch": ckpt["epoch"], "weights": ckpt["loop"]["best_weights"], **result}


def saved_run_config(saved: dict, run_dir: str) -> RunConfig:
    """The RunConfig a run folder's config.json records (its run settings, out = the folder)."""
    fields = {k: v for k, v in saved["run"].items() if k in RUN_FIELDS}
    return RunConfig(**fields, out=str(run_dir))


def plan_saved_run(run_dir: str, saved: dict, world_size: int = 1):
    """The plan of a run folder's saved config, checked against the shard set as it is now."""
    from train.plan import plan_run

    plan = plan_run(saved_run_config(saved, run_dir), world_size)
    if list(plan.classes) != saved["classes"]:
        raise WsmlError(
            f"{plan.config.shards} no longer has the classes of {run_dir} (the run's "
            f"{len(saved['classes'])} classes; the shard set has {len(plan.classes)})"
        )
    if plan.feature_dim is not None and plan.feature_dim != saved.get("feature_dim"):
        raise WsmlError(
            f"features {plan.config.features!r} have dimension {plan.feature_dim}, the run was "
            f"trained on {saved.get('feature_dim')}"
        )
    return plan


def load_model(plan, saved: dict, ckpt: dict, ctx):
    """The checkpoint's model (its EMA weights when those were selected, as the setting's
    ``create_trained_model`` loads it) on the device, and the run's data."""
    model = plan.setting.place(plan.setting.create_trained_model(plan, saved, ckpt), ctx)
    return model, plan.setting.create_data(plan, ctx, model)


def eval_lines(result: dict[str, Any], split: str, run_dir: str) -> list[str]:
    return [
        f"{run_dir}: epoch {result['epoch']} ({result['weights']} weights) on {split}: "
        f"mAP {result['mAP']:.2f}  CP {result['CP']:.2f}  CR {result['CR']:.2f}  "
        f"CF1 {result['CF1']:.2f}  OP {result['OP']:.2f}  OR {result['OR']:.2f}  "
        f"OF1 {result['OF1']:.2f}"
    ]


def methods_lines() -> list[str]:
    """One line per registered method: name, regimes, summary; then its paper and, where noted,
    how it differs from the paper's release."""
    from train.methods import METHODS

    lines = []
    width = max(len(m.name) for m in METHODS)
    for m in METHODS:
        flags = [f for f in ("needs_clip", "needs_crops", "needs_full") if getattr(m, f)]
        if m.create_model is not None:
            flags.append("own model")
        if m.dense_state:
            flags.append("needs rows x classes memory: not for large label spaces")
        if tuple(m.settings) != SETTINGS:
            flags.append(f"{'/'.join(m.settings)} only")
        extra = f" [{', '.join(flags)}]" if flags else ""
        lines.append(f"{m.name:<{width}}  {', '.join(m.regimes):<25} {m.summary}{extra}")
        lines.append(f"{'':<{width}}  {m.paper}")
        if m.release_notes:
            lines.append(f"{'':<{width}}  release: {m.release_notes}")
    return lines


def train(config: RunConfig) -> dict[str, Any]:
    """Train (or resume) the run ``config`` describes; returns its summary."""
    from train.build import start_run
    from train.context import Context
    from train.integrity import run_folder_lock
    from train.loop import fit
    from train.plan import plan_run

    plan = plan_run(config)
    ctx = Context.create(plan.config.device, config.progress)
    try:
        with run_folder_lock(plan.config.run_dir, ctx.is_main):
            if plan.config.sweep:
                from train.sweep import train_sweep

                summary = train_sweep(plan, ctx)
            else:
                summary = fit(start_run(plan, ctx), ctx)
        ctx.barrier()  # done: no rank tears its connections down while another still talks
        return summary
    finally:
        ctx.close()


def report_lines(summary: dict[str, Any]) -> list[str]:
    """What train prints of an untrained run's report (clip-zeroshot's pseudo-label quality)."""
    q = summary.get("vlpl_pseudo_labels")
    if not q:
        return []
    return [
        f"  VLPL pseudo-positives on train (s > {q['threshold']:g}, T {q['temperature']:g}): "
        f"{q['pseudo_positives']} made, {q['clean_positives']} clean positives; precision "
        f"{q['precision']:.2f}  recall {q['recall']:.2f}"
    ]
