"""Cole et al.'s hyper-parameter search (batch {8, 16} x lr {1e-2 .. 1e-5}, METHODS.md §1.3) in
the linear setting as one job: every configuration ("member") trains at once, each exactly as a
separate ``cli.py train`` run with its batch size, lr and seed would: its own head (initialised
from its seed), its own per-epoch permutation, its own method object (label state), its own Adam
groups (one fused Adam over all of them) and schedule, its own selection and early stopping.

Members with the same batch size step together: their batches are gathered as one (M, B, D)
tensor and the M heads applied with one batched matmul; each member's loss is its own method's,
and the backward pass of their sum gives each head exactly its own gradient. Evaluation scores
every member's head with one matmul per chunk of rows. The configuration with the best
validation mAP (at its best epoch) is the sweep's pick; its test mAP is reported.

Run folder: ``config.json``, ``metrics.jsonl`` (per epoch, every member's losses and mAPs),
``summary.json`` (the pick and a table of all members) and ``members/<name>/`` with each
member's ``metrics.jsonl`` and ``summary.json`` as a separate run writes them. One process; no
checkpoints (a sweep is restarted, not resumed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import torch
from torch import Tensor, nn

from shards.errors import WsmlError
from train.config import RunConfig
from train.context import Context, Schedule, cpu_threads, create_optimizer, create_schedule
from train.context import param_groups as head_groups
from train.data import FeatureData, epoch_generator, read_clip_text
from train.evaluate import epoch_record, score, selected_summary
from train.methods import Method, MethodConfig, get_method
from train.model import Ema, create_classifier
from train.runfolder import RunFolder, json_safe
from train.setup import LoopState, create_run_method, resolve

EVAL_ROWS = 4096


@dataclass
class Member:
    name: str
    seed: int
    cfg: MethodConfig
    head: nn.Linear
    method: Method
    groups: list[dict]
    schedule: Schedule
    ema: Ema | None
    folder: RunFolder
    state: LoopState = field(default_factory=LoopState)
    totals: dict[str, Tensor] = field(default_factory=dict)  # this epoch's sums of scalars
    logged: dict[str, float] = field(default_factory=dict)  # this epoch's means

    @property
    def active(self) -> bool:
        return self.state.stopped is None and self.state.epoch < self.cfg.epochs


def train_sweep(config: RunConfig, ctx: Context) -> dict[str, Any]:
    if ctx.world_size > 1:
        raise WsmlError("--sweep runs in one process (its members are the parallel part)")
    if {"lr", "batch_size"} & set(config.method_options):
        raise WsmlError("--sweep takes lr and batch size from its grid: -o sweep_lrs=…,…")
    if config.resume:
        raise WsmlError("a sweep is not resumable; start it again with --overwrite")
    config, resolved, ss = resolve(config, ctx)
    resolved["sweep"] = {"lrs": list(config.sweep_lrs), "batches": list(config.sweep_batches)}
    folder = RunFolder(config.run_dir)
    folder.check_reuse(resolved, resume=False, overwrite=config.overwrite)
    info = get_method(config.method)
    data = FeatureData.read(
        ss, config.features, config.regime, ctx, clip=config.clip, seed=config.seed, batch_size=1
    )
    text = None
    if info.needs_clip:
        text = torch.from_numpy(read_clip_text(ss, config.clip, info.name)).float()
    folder.start(resolved)
    members = [
        create_member(config, resolved, data, b, lr, folder, text, ctx)
        for b in config.sweep_batches
        for lr in config.sweep_lrs
    ]
    optimizer = create_optimizer([g for m in members for g in m.groups])
    epoch = 0
    while any(m.active for m in members):
        epoch += 1
        t0 = time.perf_counter()
        active = [m for m in members if m.active]
        with cpu_threads(1 if ctx.device.type == "cpu" else 0):
            for _, same in groupby(active, key=lambda m: m.cfg.batch_size):
                train_members(list(same), data, epoch, optimizer)
        for m in active:
            end_member_epoch(m, data, epoch)
        seconds = time.perf_counter() - t0
        line = evaluate_members(active, data, epoch, config, resolved["classes"], seconds)
        folder.append_metrics(json_safe(line))
    return finish(config, resolved, folder, members)


def create_member(config, resolved, data, batch, lr, folder, text, ctx) -> Member:
    info = get_method(config.method)
    options = {**config.method_options, "lr": repr(lr), "batch_size": str(batch)}
    cfg = info.resolve(resolved["dataset"], options)
    num_classes = len(resolved["classes"])
    head = create_classifier(resolved["feature_dim"], num_classes, config.seed).head.to(ctx.device)
    method = create_run_method(info, cfg, data, num_classes, text, config.seed, ctx.device)
    name = f"b{batch}-lr{lr:g}-s{config.seed}"
    return Member(
        name=name,
        seed=config.seed,
        cfg=cfg,
        head=head,
        method=method,
        groups=head_groups(head, head, cfg) + method.extra_parameters(),
        schedule=create_schedule(cfg, data.num_rows("train") // batch),
        ema=Ema(head, cfg.ema) if cfg.ema else None,
        folder=RunFolder(folder.path / "members" / name),
    )


def train_members(members: list[Member], data: FeatureData, epoch: int, optimizer) -> None:
    """One epoch of members that share a batch size, stepping together."""
    b = members[0].cfg.batch_size
    train = data.splits["train"]
    n = data.num_rows("train")
    perms = torch.stack(
        [torch.randperm(n, generator=epoch_generator(m.seed, epoch)) for m in members]
    )
    perms = perms.to(train["input"].device)
    for m in members:
        m.head.train()
        m.method.train()
        m.method.start_epoch(epoch)
        m.totals = {}
    for s in range(n // b):
        rows = perms[:, s * b : (s + 1) * b]  # (M, B)
        x = train["input"][rows].float()  # (M, B, D)
        weight = torch.stack([m.head.weight for m in members])  # (M, L, D)
        bias = torch.stack([m.head.bias for m in members])  # (M, L)
        logits = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))  # (M, B, L)
        total = 0
        for i, m in enumerate(members):
            batch = {k: v[rows[i]] for k, v in train.items() if k != "input"}
            if "embedding" in batch:
                batch["embedding"] = batch["embedding"].float()
            batch["row"] = rows[i]
            m.schedule.apply(m.groups, m.state.step)
            out = m.method(logits[i], batch, epoch=epoch, step=m.state.step)
            total = total + out["loss"]
            for k, v in out.items():
                m.totals[k] = m.totals.get(k, 0) + v.detach().float()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        for m in members:
            m.method.after_backward()
        optimizer.step()  # members of other batch sizes have no gradients: Adam skips them
        for m in members:
            if m.ema is not None:
                m.ema.update()
            m.state.step += 1


def end_member_epoch(m: Member, data: FeatureData, epoch: int) -> None:
    steps = max(1, data.num_rows("train") // m.cfg.batch_size)
    m.logged = {k: float(v) / steps for k, v in m.totals.items()}
    if m.method.wants_epoch_pass(epoch):
        probs = member_probs([m.head], data, "train")[0]
        rows = torch.arange(len(probs))
        m.logged.update(m.method.end_epoch(epoch, (rows, probs)))
    else:
        m.logged.update(m.method.end_epoch(epoch))


@torch.no_grad()
def member_probs(heads: list[nn.Linear], data: FeatureData, split: str) -> list[Tensor]:
    """Sigmoid scores of every head on a split, one matmul per chunk of rows."""
    x = data.splits[split]["input"]
    weight = torch.cat([h.weight for h in heads])  # (H L, D)
    bias = torch.cat([h.bias for h in heads])
    chunks = []
    for lo in range(0, len(x), EVAL_ROWS):
        chunks.append(torch.sigmoid(torch.addmm(bias, x[lo : lo + EVAL_ROWS].float(), weight.T)))
    probs = torch.cat(chunks).cpu()  # (N, H L)
    return list(probs.view(len(x), len(heads), -1).unbind(1))


def evaluate_members(
    members: list[Member], data, epoch: int, config: RunConfig, classes: list[str], seconds: float
) -> dict[str, Any]:
    """Score every member's head (and EMA) on val and test, update its selection and write its
    metrics line (and summary when it improved); returns the sweep's line for the epoch."""
    heads, owners = [], []
    for m in members:
        heads.append(m.head)
        owners.append((m, "model"))
        if m.ema is not None:
            heads.append(m.ema.module)
            owners.append((m, "ema"))
    scored = {split: member_probs(heads, data, split) for split in ("val", "test")}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for i, (m, weights) in enumerate(owners):
        per = results.setdefault(m.name, {}).setdefault(weights, {})
        for split in ("val", "test"):
            per[split] = score(scored[split][i].numpy(), data.labels(split), config.threshold)
            per[split]["probs"] = scored[split][i]
    line: dict[str, Any] = {"epoch": epoch, "members": {}, "time": round(seconds, 3)}
    for m in members:
        res = results[m.name]
        improved = m.state.update(epoch, {k: r["val"]["mAP"] for k, r in res.items()}, m.cfg)
        lrs = {g["name"]: g["lr"] for g in m.groups}
        record = epoch_record(epoch, m.state, lrs, m.logged, res, (seconds, 0.0))
        m.folder.path.mkdir(parents=True, exist_ok=True)
        m.folder.append_metrics(json_safe(record))
        if improved:
            meta = {
                "method": config.method,
                "member": m.name,
                "batch_size": m.cfg.batch_size,
                "lr": m.cfg.lr,
                "seed": m.seed,
            }
            summary = selected_summary(meta, m.state, res[m.state.best_weights], classes)
            m.folder.write_summary(json_safe(summary))
        line["members"][m.name] = {
            "loss": m.logged.get("loss"),
            "val_mAP": res["model"]["val"]["mAP"],
            "test_mAP": res["model"]["test"]["mAP"],
        }
    return line


def finish(config, resolved, folder: RunFolder, members: list[Member]) -> dict[str, Any]:
    """The pick (best val mAP at its best epoch; the first on ties) and the table."""
    table = {}
    for m in members:
        s = m.folder.read_summary()
        s.update(epochs_trained=m.state.epoch, stopped=m.state.stopped, finished=True)
        m.folder.write_summary(s)
        table[m.name] = s
    pick = max(members, key=lambda m: table[m.name]["val"]["mAP"])
    best = table[pick.name]
    summary = {
        "method": config.method,
        "setting": "linear-sweep",
        "dataset": resolved["dataset"],
        "regime": resolved["regime"]["view"],
        "seed": config.seed,
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
    folder.write_summary(json_safe(summary))
    return summary
