"""Cole et al.'s hyper-parameter search (batch {8, 16} x lr {1e-2 .. 1e-5}, METHODS.md §1.3) in
the linear setting as one job: every configuration ("member") trains at once, each exactly as a
separate ``cli.py train`` run with its batch size, lr and seed would: its own head (initialised
from its seed), its own method state and Adam state, its schedule, selection and early stopping.

Members with the same batch size form a group that steps together. A group keeps its members'
heads as one (M L, D) matrix: the batch's features (one gather: members share the seed, hence
each epoch's permutation) meet every head in one matrix product, the method's loss runs once for
all members (``Method.members``, laid out member-major; each member's loss is its own run's),
one backward pass gives each head exactly its own gradient, and one Adam update
(:class:`MemberAdam`, torch's Adam with a learning rate per member) steps them all. A method that
cannot stack (ROLE's trainable per-image estimator, with its own lr) gives one group per member,
its own parameters stepped by torch's Adam. Evaluation scores every head with one matmul per
chunk of rows. The configuration with the best validation mAP (at its best epoch) is the
sweep's pick; its test mAP is reported.

Run folder: ``config.json``, ``metrics.jsonl`` (per epoch, every member's losses and mAPs),
``summary.json`` (the pick and a table of all members) and ``members/<name>/`` with each
member's ``metrics.jsonl`` and ``summary.json`` as a separate run writes them. One process; no
checkpoints (a sweep is restarted, not resumed).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shards.errors import WsmlError
from train.build import LoopState, create_run_method
from train.config import RunConfig
from train.context import Context, cpu_threads
from train.data import FeatureData, epoch_generator, read_clip_text
from train.entry_metrics import create_class_groups
from train.evaluate import epoch_record, selected_summary
from train.methods import Method, MethodConfig, get_method, stack_members
from train.model import create_classifier
from train.optim import Schedule, create_optimizer, create_schedule
from train.plan import resolve
from train.runfolder import RunFolder, Scalars, json_safe
from train.sweep_eval import score_heads

EVAL_ROWS = 4096
ADAM_BETA2, ADAM_EPS = 0.999, 1e-8  # torch.optim.Adam's defaults, as create_optimizer uses


@dataclass
class Member:
    name: str
    seed: int
    cfg: MethodConfig
    folder: RunFolder
    state: LoopState = field(default_factory=LoopState)
    totals: dict[str, Tensor] = field(default_factory=dict)  # this epoch's sums of scalars
    logged: dict[str, float] = field(default_factory=dict)  # this epoch's means

    @property
    def active(self) -> bool:
        return self.state.stopped is None and self.state.epoch < self.cfg.epochs


class MemberAdam:
    """torch's fused Adam (the kernel ``torch.optim.Adam(fused=True)`` runs for a separate run,
    called as torch.optim.adam does) on parameters whose rows are blocks of M members: one call
    per member with its own learning rate, on views of its blocks, with its own step counts and
    moments; parameters of another weight decay (a member's bias) in a call of their own."""

    def __init__(self, params: list[tuple[Tensor, float]], members: int):
        self.members = members
        self.params = [p for p, _ in params]
        self.decays = [wd for _, wd in params]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # per member: its block of every parameter and moment (views, updated in place)
        self.blocks = [self._blocks(t) for t in (self.params, self.exp_avg, self.exp_avg_sq)]
        self.steps = [
            [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
            for _ in range(members)
        ]
        self.calls = sorted({wd for wd in self.decays})  # one call per weight decay

    def _blocks(self, tensors: list[Tensor]) -> list[list[Tensor]]:
        """[member][param] views."""
        per_param = [t.view(self.members, -1).unbind(0) for t in tensors]
        return [list(blocks) for blocks in zip(*per_param, strict=True)]

    @torch.no_grad()
    def step(self, lrs: list[float], beta1: float) -> None:
        """Step member i with lr ``lrs[i]`` (0: a stopped member, left alone)."""
        params, avgs, sqs = self.blocks
        grads = self._blocks([p.grad for p in self.params])
        live = [i for i, lr in enumerate(lrs) if lr]
        torch._foreach_add_([s for i in live for s in self.steps[i]], 1)
        for i in live:
            for wd in self.calls:
                js = [j for j, d in enumerate(self.decays) if d == wd]
                torch._fused_adam_(
                    [params[i][j] for j in js],
                    [grads[i][j] for j in js],
                    [avgs[i][j] for j in js],
                    [sqs[i][j] for j in js],
                    [],
                    [self.steps[i][j] for j in js],
                    amsgrad=False,
                    lr=lrs[i],
                    beta1=beta1,
                    beta2=ADAM_BETA2,
                    weight_decay=wd,
                    eps=ADAM_EPS,
                    maximize=False,
                )


@dataclass
class Group:
    """Members that step together: stacked heads, one (stacked) method, one Adam."""

    members: list[Member]
    batch_size: int
    weight: nn.Parameter  # (M, D, L): member i's head, transposed (one bmm for all)
    bias: nn.Parameter  # (M, 1, L)
    method: Method
    adam: MemberAdam
    schedule: Schedule
    base_lrs: list[float]  # each member's head lr
    extra: torch.optim.Optimizer | None = None  # the method's own parameters (M = 1)
    ema: tuple[Tensor, Tensor] | None = None
    step: int = 0

    @property
    def size(self) -> int:
        return len(self.members)

    def head(self, i: int, ema: bool = False) -> tuple[Tensor, Tensor]:
        """Member ``i``'s head (or its EMA) as nn.Linear holds it: (L, D) weight, (L,) bias."""
        weight, bias = self.ema if ema else (self.weight, self.bias)
        return weight[i].T, bias[i, 0]


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
    data.groups = create_class_groups(ss, config.groups)
    text = None
    if info.needs_clip:
        text = torch.from_numpy(read_clip_text(ss, config.clip, info.name)).float()
    folder.start(resolved)
    groups = create_groups(config, resolved, data, folder, text, ctx)
    scalars = Scalars(folder.path) if config.tensorboard else None
    try:
        return train_epochs(config, resolved, folder, groups, data, scalars, ctx)
    finally:
        if scalars is not None:
            scalars.close()


def train_epochs(config, resolved, folder, groups, data, scalars, ctx) -> dict[str, Any]:
    members = [m for g in groups for m in g.members]
    epoch = 0
    while any(m.active for m in members):
        epoch += 1
        t0 = time.perf_counter()
        train_groups([g for g in groups if any(m.active for m in g.members)], data, epoch, ctx)
        active = [(g, i) for g in groups for i, m in enumerate(g.members) if m.active]
        for g in {id(g): g for g, _ in active}.values():
            end_group_epoch(g, data, epoch)
        seconds = time.perf_counter() - t0
        line = evaluate_members(active, data, epoch, config, resolved["classes"], seconds)
        folder.append_metrics(json_safe(line))
        if scalars is not None:  # per member: members/<name>/val_mAP, …
            scalars.add(json_safe(line))
    return finish(config, resolved, folder, members)


def create_groups(config, resolved, data, folder, text, ctx) -> list[Group]:
    """The grid's groups: per batch size of ``config.sweep_batches``, its members (one per lr
    of ``config.sweep_lrs``) stacked, or one group each for a method that cannot stack."""
    stackable = get_method(config.method).method_class.stackable
    groups = []
    for batch in config.sweep_batches:
        specs = [(batch, lr) for lr in config.sweep_lrs]
        for part in [specs] if stackable else [[s] for s in specs]:
            groups.append(create_group(config, resolved, data, part, folder, text, ctx))
    return groups


def create_group(config, resolved, data, specs, folder, text, ctx) -> Group:
    """Members for ``specs`` ((batch, lr) pairs of one batch size), created exactly as separate
    runs create theirs, then stacked."""
    info = get_method(config.method)
    num_classes = len(resolved["classes"])
    members, methods, heads = [], [], []
    for batch, lr in specs:
        options = {**config.method_options, "lr": repr(lr), "batch_size": str(batch)}
        cfg = info.resolve(resolved["dataset"], options)
        head = create_classifier(resolved["feature_dim"], num_classes, config.seed).head
        heads.append(head.to(ctx.device))
        methods.append(
            create_run_method(info, cfg, data, num_classes, text, config.seed, ctx.device)
        )
        name = f"b{batch}-lr{lr:g}-s{config.seed}"
        members.append(Member(name, config.seed, cfg, RunFolder(folder.path / "members" / name)))
    cfg = members[0].cfg
    weight = nn.Parameter(torch.stack([h.weight.detach().T for h in heads]).contiguous())
    bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads]).unsqueeze(1))
    method = stack_members(methods)
    extra = None
    if method.extra_parameters():  # one member: its own groups, as a separate run has them
        extra = create_optimizer(method.extra_parameters(), cfg)
    lrs = [m.cfg.lr * m.cfg.head_lr_mult for m in members]
    ema = None
    if cfg.ema:
        ema = (weight.detach().clone(), bias.detach().clone())
    return Group(
        members=members,
        batch_size=cfg.batch_size,
        weight=weight,
        bias=bias,
        method=method,
        adam=MemberAdam([(weight, cfg.weight_decay), (bias, 0.0)], len(members)),
        schedule=create_schedule(cfg, data.num_rows("train") // cfg.batch_size),
        base_lrs=lrs,
        extra=extra,
        ema=ema,
    )


def train_group(group: Group, data: FeatureData, epoch: int) -> None:
    """One epoch of a group's members, stepping together."""
    b, m_count = group.batch_size, group.size
    n = data.num_rows("train")
    dev = data.ctx.device
    perm = torch.randperm(n, generator=epoch_generator(group.members[0].seed, epoch))
    offsets = torch.arange(m_count, device=dev).unsqueeze(1) * n  # member i's rows: i n + row
    live = [m.active for m in group.members]
    method = group.method
    method.train()
    method.start_epoch(epoch)
    totals: dict[str, Tensor] = {}  # each scalar's sum over the epoch, one per member
    for s in range(n // b):
        rows = perm[s * b : (s + 1) * b]
        batch = member_batch(data, rows, m_count)  # every member's copy, member-major
        rows = rows.to(dev)
        x = batch.pop("input")[:b].expand(m_count, b, -1)  # (M, B, D): every member's batch
        logits = torch.baddbmm(group.bias, x, group.weight).view(m_count * b, -1)  # member-major
        batch["row"] = (offsets + rows).reshape(-1)
        factor = group.schedule.apply([], group.step)
        i = min(group.step, len(group.schedule.lr) - 1)
        beta1 = group.schedule.beta1[i] if group.schedule.beta1 is not None else 0.9
        out = method(logits, batch, epoch=epoch, step=group.step)
        group.weight.grad = group.bias.grad = None
        if group.extra is not None:
            group.schedule.apply(group.extra.param_groups, group.step)
            group.extra.zero_grad(set_to_none=True)
        out["loss"].sum().backward()
        method.after_backward()
        lrs = [lr * factor if on else 0.0 for lr, on in zip(group.base_lrs, live, strict=True)]
        group.adam.step(lrs, beta1)
        if group.extra is not None:
            group.extra.step()
        if group.ema is not None:
            decay = group.members[0].cfg.ema
            for e, p in zip(group.ema, (group.weight, group.bias), strict=True):
                e.lerp_(p.detach(), 1.0 - decay)
        group.step += 1
        for k, v in out.items():
            totals[k] = totals.get(k, 0) + v.detach().float().reshape(-1).expand(m_count)
    for j, m in enumerate(group.members):
        m.totals = {k: v[j] for k, v in totals.items()}
        if m.active:
            m.state.step = group.step


def train_groups(groups: list[Group], data: FeatureData, epoch: int, ctx: Context) -> None:
    """One epoch of every group. On a CPU the groups train side by side, one thread per core
    (as many as torch's intra-op threads), each running its ops single-threaded: a step is a
    few small ops, where OpenMP's barriers cost more than they gain (and stall when another
    process takes a core), while the groups are independent. Longest first; on a GPU one after
    another (its kernels run asynchronously anyway). Each member's arithmetic is the same
    either way."""
    workers = min(torch.get_num_threads(), len(groups)) if ctx.device.type == "cpu" else 1
    if workers <= 1:
        with cpu_threads(1 if ctx.device.type == "cpu" else 0):
            for group in groups:
                train_group(group, data, epoch)
        return
    n = data.num_rows("train")
    order = sorted(groups, key=lambda g: -g.size * (n // g.batch_size))  # member-steps
    with cpu_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="wsml-sweep") as pool:
        for done in [pool.submit(train_group, g, data, epoch) for g in order]:
            done.result()  # re-raises a group's error (e.g. a non-finite loss) here


def end_group_epoch(group: Group, data: FeatureData, epoch: int) -> None:
    """Each member's epoch means, and the method's end of epoch, once for the group: an
    epoch pass (EM+APL) scores the training split with every member's head, member-major rows
    as in training; a value per member (a list) goes to each, one value to all."""
    for m in group.members:
        steps = max(1, data.num_rows("train") // m.cfg.batch_size)
        m.logged = {k: float(v) / steps for k, v in m.totals.items()}
    method = group.method
    predictions = None
    if method.wants_epoch_pass(epoch):
        probs = member_probs([group.head(i) for i in range(group.size)], data, "train")
        n = len(probs[0])
        rows = torch.arange(group.size * n)
        predictions = (rows, torch.cat(probs))
    ended = method.end_epoch(epoch, predictions)
    for i, m in enumerate(group.members):
        m.logged.update({k: v[i] if isinstance(v, list) else v for k, v in ended.items()})


def member_batch(data: FeatureData, rows: Tensor, members: int) -> dict[str, Tensor]:
    """The batch of ``rows`` (features from the memory map, labels made dense on the device),
    its tensors repeated once per member (member-major), as each member's run would see it."""
    batch = data.batch("train", rows)
    batch.pop("row")
    if members > 1:
        batch = {k: (v if k == "input" else torch.cat([v] * members)) for k, v in batch.items()}
    return batch


@torch.no_grad()
def member_probs(heads: list[tuple[Tensor, Tensor]], data: FeatureData, split: str) -> list[Tensor]:
    """Sigmoid scores of every head ((L, D) weight, (L,) bias) on a split, one matmul per chunk
    of rows; one (N, L) tensor per head."""
    x = data.features[split]  # the memory map, read a chunk at a time
    weight = torch.cat([w for w, _ in heads])  # (H L, D)
    bias = torch.cat([b for _, b in heads])
    chunks = []
    for lo in range(0, len(x), EVAL_ROWS):
        part = torch.from_numpy(np.array(x[lo : lo + EVAL_ROWS])).to(weight.device).float()
        chunks.append(torch.sigmoid(torch.addmm(bias, part, weight.T)).cpu())
    probs = torch.cat(chunks)  # (N, H L)
    return list(probs.view(len(x), -1, data.num_classes).unbind(1))


def evaluate_members(
    active: list[tuple[Group, int]],
    data,
    epoch: int,
    config: RunConfig,
    classes: list[str],
    seconds: float,
) -> dict[str, Any]:
    """Score every active member's head (and EMA) on val and test, update its selection and
    write its metrics line (and summary when it improved); returns the sweep's line."""
    heads, owners = [], []
    for g, i in active:
        for weights in ("model", "ema") if g.ema is not None else ("model",):
            heads.append(g.head(i, ema=weights == "ema"))
            owners.append((g.members[i], weights))
    scored = {
        split: score_heads(heads, data, split, config.threshold, member_probs)
        for split in ("val", "test")
    }  # sized by annotations where labels are unknown (train/sweep_eval.py)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for j, (m, weights) in enumerate(owners):
        per = results.setdefault(m.name, {}).setdefault(weights, {})
        for split in ("val", "test"):
            per[split] = scored[split][j]
    line: dict[str, Any] = {"epoch": epoch, "members": {}, "time": round(seconds, 3)}
    for g, i in active:
        m = g.members[i]
        res = results[m.name]
        improved = m.state.update(epoch, {k: r["val"]["mAP"] for k, r in res.items()}, m.cfg)
        lrs = member_lrs(g, i)
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


def member_lrs(group: Group, i: int) -> dict[str, float]:
    """The lr of each optimiser group member ``i``'s separate run would log, at the group's
    step (the schedule's value for the last step taken)."""
    cfg = group.members[i].cfg
    factor = group.schedule.lr[min(max(group.step - 1, 0), len(group.schedule.lr) - 1)]
    lr = cfg.lr * cfg.head_lr_mult * factor
    out = {"head-no-decay": lr, "head": lr}
    if group.extra is not None:
        out.update({g["name"]: g["lr"] for g in group.extra.param_groups})
    return out


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
