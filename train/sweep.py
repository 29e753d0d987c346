"""Cole et al.'s hyper-parameter search (batch {8, 16} x lr {1e-2 .. 1e-5}, METHODS.md §1.3) in
the linear setting as one job: every configuration ("member") trains at once, each exactly as a
separate ``cli.py train`` run with its batch size, lr and seed would: its own head (initialised
from its seed), its own method state and Adam state, its schedule, selection and early stopping.

The members of a batch size form a group, which is a :class:`~train.build.Run` of the one loop
(train/loop.py) with one :class:`~train.build.Track` per member: its model is
:class:`~models.heads.StackedHeads` (the members' heads as one (M, D, L) parameter, one batched matmul giving
member-major logits), its method one copy standing for all members (``stack_members``: each
member's loss is its own run's, per-row state kept per member), and its optimiser
:class:`~train.optim.MemberOptimizer` (torch's fused Adam kernel per member block, with the member's own lr;
a stopped member is left alone). A method that cannot stack (ROLE's trainable per-image
estimator) gives one group per member. The configuration with the best validation mAP (at its
best epoch) is the sweep's pick; its test mAP is reported.

Run folder: ``config.json``, ``metrics.jsonl`` (per epoch, every member's losses and mAPs),
``summary.json`` (the pick and a table of all members) and ``members/<name>/`` with each
member's ``metrics.jsonl`` and ``summary.json`` as a separate run writes them; the pick's head at
its selected epoch as ``checkpoint-best.pt`` and its val and test predictions, so ``predict``
and ``export`` use the sweep as they use a run (with ``--keep-members``, every member's in its
folder). One process; no resumable checkpoints (a sweep is restarted, not resumed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from models.heads import StackedHeads
from shards.base.errors import WsmlError
from shards.base.fileio import write_bytes_atomic
from train.bootstrap import write_test_ci
from train.build import (
    CHECKPOINT_FORMAT,
    Run,
    Track,
    create_run,
    create_run_method,
    read_text_embeddings,
    with_provenance,
)
from train.checkpoints import dumps_checkpoint
from train.context import Context
from train.loop import final_fields, fit_epochs
from train.methods import stack_members
from train.optim import MemberOptimizer
from train.plan import RunPlan
from train.runfolder import BEST, MEMBERS, RunFolder, TensorBoardLog, json_safe


def train_sweep(plan: RunPlan, ctx: Context) -> dict[str, Any]:
    config = plan.config
    if ctx.world_size > 1:
        raise WsmlError("--sweep runs in one process (its members are the parallel part)")
    if {"lr", "batch_size"} & set(config.method_options):
        raise WsmlError("--sweep takes lr and batch size from its grid: -o sweep_lrs=…,…")
    if config.resume and not config.overwrite:
        raise WsmlError(
            f"--resume: {config.run_dir} is a sweep, which is not resumable; add --overwrite to "
            "start it again (with its saved settings)"
        )
    record = plan.to_json()
    folder = RunFolder(config.run_dir)
    folder.check_reuse(record, resume=False, overwrite=config.overwrite)
    data = plan.setting.create_data(plan.with_method(batch_size=1), ctx, nn.Identity())
    folder.start(with_provenance(record, plan))
    groups = create_groups(plan, data, folder, ctx)
    log = TensorBoardLog(folder.path) if config.tensorboard else None
    kept = KeptHeads(groups, config.keep_members)
    try:
        fit_epochs(groups, ctx, on_epoch=_sweep_line(folder, log, kept))
    finally:
        if log is not None:
            log.close()
    summary = finish(plan, folder, [t for g in groups for t in g.tracks])
    kept.write(folder, summary["chosen"], record)
    summary.update(write_test_ci(folder.path, data.labels("test")))
    folder.write_summary(json_safe(summary))
    return summary


class KeptHeads:
    """Each kept member's head (and val/test predictions) at its selected epoch, taken in the
    epoch it improved: the leader's only (the member with the best val mAP so far, the first
    on ties, as :func:`finish` picks), or every member's with ``--keep-members``."""

    def __init__(self, groups: list[Run], keep_all: bool):
        self.at = {t.name: (g, i) for g in groups for i, t in enumerate(g.tracks)}
        self.tracks = [t for g in groups for t in g.tracks]
        self.keep_all = keep_all
        self.heads: dict[str, dict[str, Any]] = {}

    def after_epoch(self, epoch: int, outcomes: list) -> None:
        leader = max(self.tracks, key=lambda t: t.state.best_val)
        for track, _, results in outcomes:
            if track.state.best_epoch == epoch and (self.keep_all or track is leader):
                self.heads[track.name] = self._take(track, results[track.state.best_weights])
        if not self.keep_all:
            self.heads = {k: v for k, v in self.heads.items() if k == leader.name}

    def _take(self, track: Track, results: dict) -> dict[str, Any]:
        group, i = self.at[track.name]
        models = group.eval_models()
        stacked = models[track.state.best_weights]
        head = {"head.weight": stacked.weight[i].T.detach().cpu().clone(),
                "head.bias": stacked.bias[i, 0].detach().cpu().clone()}  # fmt: skip
        probs = {s: results[s]["probs"] for s in ("val", "test") if "probs" in results[s]}
        return {"head": head, "probs": probs, "loop": dataclasses.asdict(track.state)}

    def write(self, folder: RunFolder, chosen: str, record: dict) -> None:
        """The pick's into the sweep's folder; the others' into their members' folders."""
        for name, kept in self.heads.items():
            home = folder if name == chosen else RunFolder(folder.path / MEMBERS / name)
            for split, probs in kept["probs"].items():
                if home is folder and split == "test":
                    continue  # the sweep's own (keep_member_predictions), the same numbers
                home.write_predictions(split, probs.numpy())
            state = {
                "format": CHECKPOINT_FORMAT,
                "config": record,
                "member": name,
                "epoch": kept["loop"]["best_epoch"],
                "model": kept["head"],
                "ema": None,
                "loop": {**kept["loop"], "best_weights": "model"},
            }
            write_bytes_atomic(home.path / BEST, dumps_checkpoint(state))


def create_groups(plan: RunPlan, data, folder: RunFolder, ctx: Context) -> list[Run]:
    """The grid's groups: per batch size of ``sweep_batches``, its members (one per lr of
    ``sweep_lrs``) stacked, or one group each for a method that cannot stack."""
    config = plan.config
    text = read_text_embeddings(plan) if plan.shard_set is not None else None
    groups = []
    for batch in config.sweep_batches:
        members = [plan.with_method(lr=lr, batch_size=batch) for lr in config.sweep_lrs]
        stackable = plan.info.method_class.stackable
        for part in [members] if stackable else [[m] for m in members]:
            groups.append(create_group(part, data.with_batch_size(batch), folder, text, ctx))
    return groups


def create_group(members: list[RunPlan], data, folder: RunFolder, text, ctx: Context) -> Run:
    """One group: members' heads (their setting's model) and methods created exactly as
    separate runs create theirs, then stacked."""
    tracks, methods, heads = [], [], []
    for plan in members:
        cfg, seed = plan.method, plan.config.seed
        heads.append(plan.setting.create_model(plan)[0].head)
        methods.append(create_run_method(plan, data, text, ctx.device))
        name = f"b{cfg.batch_size}-lr{cfg.lr:g}-s{seed}"
        meta = {
            "method": plan.config.method,
            "member": name,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "seed": seed,
        }
        tracks.append(Track(name, cfg, RunFolder(folder.path / "members" / name), meta=meta))
    model = StackedHeads(heads).to(ctx.device)
    method = stack_members(methods)
    optimizer = MemberOptimizer(model, tracks, method.extra_parameters())
    return create_run(members[0], data, model, method, optimizer, tracks, record={})


def _sweep_line(folder: RunFolder, log: TensorBoardLog | None, kept: KeptHeads):
    """The sweep's own metrics line per epoch: every active member's loss and mAPs (and the
    kept members' heads taken)."""

    def hook(epoch: int, outcomes: list, seconds: float) -> None:
        kept.after_epoch(epoch, outcomes)
        line: dict[str, Any] = {"epoch": epoch, "members": {}, "time": round(seconds, 3)}
        for track, record, results in outcomes:
            line["members"][track.name] = {
                "loss": record["train"].get("loss"),
                "val_mAP": results["model"]["val"]["mAP"],
                "test_mAP": results["model"]["test"]["mAP"],
            }
        folder.append_metrics(json_safe(line))
        if log is not None:  # per member: members/<name>/val_mAP, …
            log.add(json_safe(line))

    return hook


def finish(plan: RunPlan, folder: RunFolder, tracks: list[Track]) -> dict[str, Any]:
    """The pick (best val mAP at its best epoch; the first on ties) and the table."""
    table = {}
    for t in tracks:
        s = {**t.folder.read_summary(), **final_fields(t), "finished": True}
        t.folder.write_summary(s)
        table[t.name] = s
    pick = max(tracks, key=lambda t: table[t.name]["val"]["mAP"])
    best = table[pick.name]
    summary = {
        "method": plan.config.method,
        "setting": "linear-sweep",
        "dataset": plan.dataset,
        "regime": plan.view,
        "seed": plan.config.seed,
        "chosen": pick.name,
        **{k: best[k] for k in ("batch_size", "lr", "best_epoch", "weights", "val", "test")},
        "test_ap": best["test_ap"],
        "members": {
            name: {
                "batch_size": s["batch_size"],
                "lr": s["lr"],
                "best_epoch": s["best_epoch"],
                "val_mAP": s["val"]["mAP"],
                "test_mAP": s["test"]["mAP"],
                "epochs_trained": s["epochs_trained"],
                "stopped": s["stopped"],
            }
            for name, s in table.items()
        },
    }
    folder.keep_member_predictions(pick.name)  # for the report's precision-recall curves
    folder.write_summary(json_safe(summary))
    return summary
