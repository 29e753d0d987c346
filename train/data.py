"""Batches for the loop, one interface for both settings: ``train_batches(epoch)`` yields this
rank's part of every step's global batch, ``eval_batches(split)`` this rank's share of a split
(``valid`` False marks padding), each a dict with ``input``, ``row``, ``observed``, ``full`` and,
for methods that need CLIP, ``embedding`` (and the training split's ``crops``: AEVLP).

Linear (:class:`FeatureData`): the cached features of every split in memory. Epoch ``e``
shuffles the training rows with a permutation drawn from a generator seeded by (seed, e); step
``s`` takes the global batch ``perm[s B : (s + 1) B]`` (the last partial batch is dropped) and
rank ``r`` of ``W`` its contiguous ``[r B / W, (r + 1) B / W)``. So the samples of every step,
and their order, are the same for any number of ranks. Eval: rank ``r`` scores rows
``[r N / W, (r + 1) N / W)``.

End-to-end (:class:`ImageData`): images streamed by ``pipelines.create_loader`` with ``B / W``
samples per rank and step (its sharding: a rank reads a rotating shard of each epoch).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from pipelines import sharding
from pipelines.distributed import host_to_device
from pipelines.labels import DeviceLabels, gather_rows, mapped_tensor
from shards import caches
from shards.base.errors import WsmlError
from shards.lists import LabelLists
from shards.shardset import ShardSet
from train.context import Context
from train.entry_metrics import EntryIndex

SPLITS = ("train", "val", "test")
LINEAR_EVAL_ROWS = 4096
EVAL_CELLS = 1 << 22  # a linear scoring chunk's rows x classes at most (16 MB of float32 scores)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s permutation: a function of (seed, epoch) alone, so a
    resumed run draws exactly what an uninterrupted one does."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def read_features(ss: ShardSet, tag: str, split: str, what: str = "features") -> np.ndarray:
    arr = caches.read_split(ss.root, tag, split)
    rows = int(ss.split(split)["num_samples"])
    if arr.shape[0] != rows:
        raise WsmlError(
            f"{what} {tag!r} have {arr.shape[0]} rows for split {split}, its label table has "
            f"{rows}: cache them again"
        )
    check_finite_rows(arr, f"{what} {tag!r} of {ss.root}, split {split}")
    return arr


def read_crops(ss: ShardSet, tag: str) -> np.ndarray:
    """(N, K, D) CLIP embeddings of the K tiles of every training image (``--crops``)."""
    arr = caches.read_crops(ss.root, tag, "train")
    if arr.shape[0] != int(ss.split("train")["num_samples"]):
        raise WsmlError(f"crops of {tag!r} have {arr.shape[0]} rows for split train, its label "
                        "table has others: cache them again")  # fmt: skip
    check_finite_rows(arr, f"crop embeddings {tag!r} of {ss.root}, split train")
    return arr


def check_crops(ss: ShardSet, tag: str, grid: int, method: str) -> None:
    """Before any work: the CLIP cache ``tag`` holds the training split's tiles on ``grid``."""
    crops = caches.get_cache(ss.root, tag).get("crops") or {}
    if "train" not in crops.get("splits", {}):
        caches.read_crops(ss.root, tag, "train")  # raises, saying how to make them
    if int(crops["grid"]) != grid:
        raise WsmlError(
            f"method {method} takes a grid of {grid} x {grid} tiles; cache {tag!r} holds "
            f"grid{crops['grid']} crops: pass -o grid={crops['grid']} or cache again with "
            f"--crops grid{grid}"
        )


def cache_dim(ss: ShardSet, tag: str, what: str) -> int:
    meta = caches.get_cache(ss.root, tag)
    missing = [s for s in ("train", "val", "test") if s not in meta["splits"]]
    if missing:
        raise WsmlError(f"{what} {tag!r} of {ss.root} lack split(s) {', '.join(missing)}")
    return int(meta["dim"])


def check_finite_rows(arr: np.ndarray, what: str, chunk: int = 65536) -> None:
    """Refuse NaN or infinite values, naming the first bad rows: otherwise they surface later
    as a non-finite loss or NaN scores, far from their cause."""
    bad: list[int] = []
    for start in range(0, len(arr), chunk):
        rows = ~np.isfinite(arr[start : start + chunk]).all(axis=tuple(range(1, arr.ndim)))
        bad += (np.flatnonzero(rows)[: 5 - len(bad)] + start).tolist()
        if len(bad) >= 5:
            break
    if bad:
        raise WsmlError(
            f"{what}: row(s) {', '.join(map(str, bad))} hold NaN or infinite values; make the "
            "cache again (cli.py cache-features / cache-clip --overwrite)"
        )


def read_clip_text(ss: ShardSet, tag: str, method: str) -> np.ndarray:
    """(L, D) class-text embeddings of a CLIP cache, for a method that needs them."""
    meta = caches.get_cache(ss.root, tag)
    if "text" not in meta:
        raise WsmlError(
            f"method {method} needs a CLIP cache (image and class-text embeddings); cache "
            f"{tag!r} has no class-text embeddings: make one with `cli.py cache-clip --shards "
            f"{ss.root}` and pass it with --clip TAG (or --features TAG)"
        )
    text = caches.read_text(ss.root, tag)
    if text.shape != (len(ss.classes), meta["dim"]):
        raise WsmlError(
            f"class-text embeddings of {tag!r} have shape {text.shape}, expected "
            f"({len(ss.classes)}, {meta['dim']}): cache them again"
        )
    return text


class FeatureData:
    """Every split's cached features and (for CLIP methods) image embeddings, read from their
    memory maps a batch at a time (float16, converted per batch; never a second full copy),
    and its observed and full labels kept ragged on the device, each batch made dense (B, L)
    there. ``splits[split]`` holds ``input`` (N, D), ``observed`` and ``full`` (LabelLists,
    or int8 (N, L) matrices, made ragged) and optionally ``embedding`` (N, E) and ``crops``
    (N, K, E)."""

    groups = None  # classes of the frequency groups G1..G5 to report, or None

    def __init__(
        self,
        splits: dict[str, dict],
        ctx: Context,
        *,
        seed: int,
        batch_size: int,
        eval_rows: int = 0,
    ):
        self.ctx, self.seed, self.batch_size = ctx, seed, batch_size
        self.local = ctx.local_batch(batch_size)
        self.entry_indexes: dict[str, EntryIndex] = {}  # made on first use (_entry_index)
        self.features = {s: _as_array(d["input"]) for s, d in splits.items()}
        self.embeddings = {
            s: _as_array(d["embedding"]) for s, d in splits.items() if "embedding" in d
        }
        self.crops = {s: _as_array(d["crops"]) for s, d in splits.items() if "crops" in d}
        self.label_lists = {
            s: {
                k: DeviceLabels(_as_lists(d[k]), ctx.device, f"{k} labels of split {s}")
                for k in ("observed", "full")
            }
            for s, d in splits.items()
        }
        dims = {tuple(f.shape[1:]) for f in self.features.values()}
        if len(dims) != 1:
            raise WsmlError(f"features differ in dimension between splits: {sorted(dims)}")
        self.feature_dim = int(self.features["train"].shape[1])
        self.num_classes = self.label_lists["train"]["full"].num_classes
        # 4096 rows a chunk, fewer where the classes are many (Open Images' 5,000: 838), so a
        # chunk's (rows, L) scores and labels stay small; the scores do not depend on it
        self.eval_rows = eval_rows or min(LINEAR_EVAL_ROWS, max(1, EVAL_CELLS // self.num_classes))

    @classmethod
    def read(
        cls,
        ss: ShardSet,
        features: str,
        view: str,
        ctx: Context,
        *,
        clip: str | None = None,
        crops: bool = False,
        **kw,
    ) -> FeatureData:
        """The cache ``features`` (and ``clip``'s image embeddings, with ``crops`` the training
        split's tiles' too) of every split, memory-mapped, with the observed labels of ``view``
        and the clean labels, ragged."""
        splits = {}
        for split in SPLITS:
            data = {
                "input": read_features(ss, features, split),
                "observed": ss.observed_lists(view, split),
                "full": ss.full_lists(split),
            }
            if clip is not None:
                data["embedding"] = read_features(ss, clip, split, "CLIP embeddings")
            if crops and split == "train":
                data["crops"] = read_crops(ss, clip)
            splits[split] = data
        return cls(splits, ctx, **kw)

    @functools.cached_property
    def views(self) -> dict[str, dict[str, Tensor]]:
        """Zero-copy tensors over the features' and embeddings' memory maps, made once (and
        shared by the copies ``with_batch_size`` makes after)."""
        return {
            "input": {s: mapped_tensor(a) for s, a in self.features.items()},
            "embedding": {s: mapped_tensor(a) for s, a in self.embeddings.items()},
            "crops": {s: mapped_tensor(a) for s, a in self.crops.items()},
        }

    def with_batch_size(self, batch_size: int) -> FeatureData:
        """The same features and labels (shared, not copied) in batches of ``batch_size``."""
        out = copy.copy(self)
        out.batch_size, out.local = batch_size, self.ctx.local_batch(batch_size)
        return out

    def num_rows(self, split: str) -> int:
        return len(self.features[split])

    def labels(self, split: str) -> LabelLists:
        """The split's clean labels, ragged (evaluation scores annotated entries from them)."""
        return self.label_lists[split]["full"].lists

    def entry_index(self, split: str) -> EntryIndex:
        """The split's annotated entries, made once (evaluation sized by annotations)."""
        return _entry_index(self, split)

    def observed(self, split: str) -> LabelLists:
        return self.label_lists[split]["observed"].lists

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows("train") // self.batch_size

    def gather(self, split: str, rows: Tensor) -> dict[str, Tensor]:
        """The rows' features (and embeddings) from the memory maps, as float32 on the device:
        torch's index_select on a zero-copy view of the map (it reads only the rows' pages and
        releases the GIL, so the stacked sweep's groups gather side by side)."""
        views, dev = self.views, self.ctx.device
        idx = rows.cpu()
        out = {"input": gather_rows(views["input"][split], idx, dev).float()}
        for key in ("embedding", "crops"):
            if split in views[key]:
                out[key] = gather_rows(views[key][split], idx, dev).float()
        return out

    def batch(self, split: str, rows: Tensor, gathered: dict | None = None) -> dict[str, Tensor]:
        """The rows' (on the CPU) features, labels and rows on the device, with no host sync."""
        out = dict(gathered) if gathered is not None else self.gather(split, rows)
        for k, labels in self.label_lists[split].items():
            out[k] = labels.dense(rows)
        out["row"] = host_to_device(rows, self.ctx.device)
        return out

    def train_batches(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        """This rank's batches, each gathered from the memory map when it is asked for (a
        linear step is a few small ops: a read-ahead thread cost more than it saved)."""
        n, b, r = self.num_rows("train"), self.batch_size, self.ctx.rank
        perm = torch.randperm(n, generator=epoch_generator(self.seed, epoch))
        for s in range(self.steps_per_epoch):
            lo = s * b + r * self.local
            yield self.batch("train", perm[lo : lo + self.local])

    def state_dict(self) -> None:
        """Nothing: epoch ``e``'s order is a function of (seed, e)."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        return None

    def eval_batches(self, split: str) -> Iterator[dict[str, Tensor]]:
        start, end = sharding.shard_range(self.num_rows(split), self.ctx.rank, self.ctx.world_size)
        for lo in range(start, end, self.eval_rows):
            rows = torch.arange(lo, min(end, lo + self.eval_rows))
            out = self.batch(split, rows)
            out["valid"] = torch.ones(len(rows), dtype=torch.bool, device=self.ctx.device)
            yield out


def _entry_index(data, split: str) -> EntryIndex:
    """The split's EntryIndex, made on first use and kept in ``data.entry_indexes`` (a dict
    the shallow copies of ``with_batch_size`` share)."""
    if split not in data.entry_indexes:
        data.entry_indexes[split] = EntryIndex(data.labels(split))
    return data.entry_indexes[split]


def _as_array(x) -> np.ndarray:
    """A memory map or array as it is; a tensor as its numpy view (tests, the benchmark)."""
    return x.numpy() if isinstance(x, Tensor) else x


def _as_lists(x) -> LabelLists:
    if isinstance(x, LabelLists):
        return x
    return LabelLists.from_dense(x.numpy() if isinstance(x, Tensor) else np.asarray(x))


class ImageData:
    """Images through ``create_loader``: one loader per split, each reading its DALI graph epoch
    after epoch (the fallback builds each epoch from (seed, epoch, rank)); the training
    loader's state goes into the run's checkpoints, so a resumed run reads on exactly."""

    groups = None  # classes of the frequency groups G1..G5 to report, or None

    def __init__(
        self,
        ss: ShardSet,
        view: str,
        ctx: Context,
        *,
        preset,
        seed: int,
        batch_size: int,
        clip: str | None = None,
        crops: bool = False,
        backend: str = "auto",
        eval_batch: int = 0,
    ):
        from pipelines.loader import LoaderOptions, create_loader

        self.ss, self.view, self.ctx, self.batch_size = ss, view, ctx, batch_size
        self._labels: dict[str, LabelLists] = {}
        self.entry_indexes: dict[str, EntryIndex] = {}  # made on first use (_entry_index)
        self.local = ctx.local_batch(batch_size)
        reading = LoaderOptions(
            rank=ctx.rank, world_size=ctx.world_size, device=ctx.device, seed=seed, backend=backend
        )
        common = dict(regime=view, preset=preset, embeddings=clip, options=reading)
        self.loaders = {  # the training split's tiles (crops) where the method asks for them
            "train": create_loader(
                ss, "train", batch_size=self.local, train=True, crops=crops, **common
            )
        }
        for split in SPLITS:  # the training split once more, in eval mode (epoch passes)
            self.loaders[f"eval-{split}"] = create_loader(
                ss, split, batch_size=eval_batch or self.local, train=False, **common
            )
        # one copy of the training split's labels on the device, shared by both its loaders
        self.loaders["eval-train"].table = self.loaders["train"].table
        self.channels_last = use_fixed_size_cuda(ctx.device)

    def num_rows(self, split: str) -> int:
        return int(self.ss.split(split)["num_samples"])

    def labels(self, split: str) -> LabelLists:
        if split not in self._labels:
            self._labels[split] = self.ss.full_lists(split)
        return self._labels[split]

    def entry_index(self, split: str) -> EntryIndex:
        return _entry_index(self, split)

    def observed(self, split: str) -> LabelLists:
        return self.ss.observed_lists(self.view, split)

    @property
    def steps_per_epoch(self) -> int:
        """From the manifest's sample counts (the loader's own formula), not len() of it."""
        n = self.num_rows("train")
        return sharding.num_batches(n, self.local, self.ctx.world_size, train=True)

    def _batches(self, key: str, epoch: int) -> Iterator[dict[str, Tensor]]:
        loader = self.loaders[key]
        loader.set_epoch(epoch)
        for batch in loader:
            x = batch.pop("image")
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch["input"] = x
            yield batch

    def train_batches(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        return self._batches("train", epoch)

    def state_dict(self) -> dict:
        """The training loader's state (``Loader.state_dict``), for this rank's checkpoint."""
        return self.loaders["train"].state_dict()

    def load_state_dict(self, state: dict | None) -> str | None:
        """Go on from this rank's saved state; returns why it cannot (None: it can)."""
        return self.loaders["train"].load_state_dict(state)

    def eval_batches(self, split: str) -> Iterator[dict[str, Tensor]]:
        return self._batches(f"eval-{split}", 0)


def use_fixed_size_cuda(device: torch.device) -> bool:
    """On a GPU, let cuDNN pick its fastest kernels once: a preset's batches all have one size
    (training drops the last partial batch, evaluation pads it), so the search pays off.
    Returns whether batches go channels-last (GPU only)."""
    if device.type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    return True


def e2e_preset(name: str, image_size: int, cfg: dict):
    """A registered preset's geometry with the backbone's mean/std (``cfg``, timm's
    ``pretrained_cfg``), or (``image_size`` > 0) a centre crop of that size (quick runs and
    smoke tests). A model of one input size only (``fixed_input_size``: CLIP towers, ViTs)
    refuses any other, before any work."""
    from pipelines.presets import center_crop_preset, get_preset

    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if image_size:
        preset = center_crop_preset(image_size, mean, std, "bilinear", name=f"center{image_size}")
    else:
        preset = dataclasses.replace(get_preset(name), mean=mean, std=std)
    want = tuple(cfg.get("input_size", ()))[1:]
    if cfg.get("fixed_input_size") and want and want != (preset.size, preset.size):
        raise WsmlError(
            f"the model takes {want[0]}x{want[1]} images only; preset {preset.name} makes "
            f"{preset.size}x{preset.size} (use -o image_size={want[0]} or a preset of that size)"
        )
    return preset
