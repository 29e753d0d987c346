"""OASS: Xu et al., ICIP 2022, "Object-Aware Self-Supervised Multi-Label Learning" (METHODS.md §8;
release Akimoto-Cris/OASSMLL on Puzzle-CAM). Fully supervised multi-label classification with an
object-aware puzzle task; the classifier is models/oass.py.

Per step, on the student's CAM normalised as Puzzle-CAM's make_cam and upsampled (bilinear) to
the input size, a key point per positive class (``keypoint``):
  max     argmax of the max over the image's positive classes (one cut per image);
  cmax    argmax of each positive class's map;
  ctopk   the local maxima (skimage peak_local_max's rule: the max of a (2d+1)^2 window, above
          the map's minimum, at least d from the border; d = min_distance), the top k (k 5) of
          them by value, of those the ones within ``radius`` of the global max, their integer
          (floor) mean position;
  ctopk-w the top k peaks' mean position weighted by their CAM values, floored.
No peak, or a key point on row 0 or column 0, gives the image centre. The image is cut into 4
quadrants at the key point, each resized (nearest) to half the input size, and passed through the
EMA teacher (max: through the student itself, in the same forward call as the image); the 4 CAMs
are resized (nearest) back to the quadrants' sizes on the CAM grid (key point // stride, at least 1)
and stitched into R. With t the cut's target (one-hot of its class; max: the image's labels):

  p_class = MLSML(GAP(R), t)       re = mean_{l,y,x} |CAM_l - R_l| t_l      (means over the cuts)
  loss = MLSML(logits, y) + alpha_p p_class + alpha_re(s) re,
  alpha_re(s) = min(alpha_re s / (T alpha_schedule), alpha_re)  (s: global step, T: the run's steps)

with MLSML(z, y) = -mean_l [y_l log sigmoid(z_l) + (1 - y_l) log sigmoid(-z_l)]. The teacher
follows the student's parameters after each step with decay min(1 - 1/(s + 1), 0.99) and runs in
train mode (batch statistics), as released. With a teacher R carries no gradient, so p_class only
logs (as released). Pixel constants (min_distance 20, radius 128, crops 256, centre 256) are the
release's at 512 px and scale with the input size / 512 (tiny test images work).

Deviations from the release, all for the paper's intent: ctopk measures the distance to the global
max as (row, col) in both branches (the release compares the row with the max's column when there
are more than k peaks); ctopk-w floors the weighted mean (the release truncates each weighted term,
up to k - 1 px toward the origin); all cuts of a batch go through the teacher as one batch (its
batch statistics are over all quadrants, not 4 at a time). Optimiser: Puzzle-CAM's PolyOptimizer
passes the weight decay where SGD takes its momentum, so the release trains with momentum 1e-4
(and Nesterov): with lr 0.1 tuned that way the default here is plain SGD (momentum 0; ``-o
momentum=1e-4`` reproduces the release, Nesterov aside, and ``-o momentum=0.9 -o lr=0.01`` keeps
the step size with a real momentum).

Labels: the paper trains on full labels. On single-positive or partial labels (an extension) the
unknown entries count as negatives in the classification MLSML and only observed positives get
cuts; a notice says so when the method is created.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.oass import create_oass_model, normalise_cam
from pipelines.distributed import get_rank
from shards.base.errors import WsmlError
from shards.base.options import AT_LEAST_ONE, BELOW_ONE, NON_NEGATIVE, POSITIVE
from train.methods import Method, MethodConfig, MethodInfo, register_method

PAPER = "Xu et al., ICIP 2022, Object-Aware Self-Supervised Multi-Label Learning"
SOURCE = (
    "OASSMLL README and train_classification_with_puzzle_*.py (METHODS.md §8): SGD (Puzzle-CAM "
    "PolyOptimizer, 4 lr groups, wd 1e-4), poly 0.9, lr 0.1, batch 32, 15 epochs, 512 px crops of "
    "images resized to 320-640; alpha_p 0.5, alpha_re 3.0, schedule 0.05; EMA teacher 0.99; "
    "k 5, min_distance 20, radius 128. VOC2012 only: the same values for every dataset"
)
KEYPOINTS = ("max", "cmax", "ctopk", "ctopk-w")
REFERENCE_SIZE = 512  # the input size the release's pixel constants are given at


@dataclass(frozen=True)
class OassConfig(MethodConfig):
    lr: float = 0.1
    batch_size: int = 32
    epochs: int = 15
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    momentum: float = 0.0  # the release's is 1e-4 (module docstring)
    schedule: str = "poly"
    keypoint: str = "ctopk-w"
    alpha_p: float = 0.5
    alpha_re: float = 3.0
    alpha_schedule: float = 0.05  # alpha_re reaches its value after this fraction of the run
    teacher_decay: float = 0.99
    topk: int = 5
    min_distance: float = 20.0  # px at 512 px
    radius: float = 128.0  # px at 512 px

    RANGES: ClassVar = {
        "alpha_p": NON_NEGATIVE,
        "alpha_re": NON_NEGATIVE,
        "alpha_schedule": NON_NEGATIVE,
        "teacher_decay": BELOW_ONE,
        "topk": AT_LEAST_ONE,
        "min_distance": POSITIVE,
        "radius": POSITIVE,
    }

    def check(self) -> None:
        super().check()
        if self.keypoint not in KEYPOINTS:
            raise WsmlError(
                f"keypoint must be one of {', '.join(KEYPOINTS)}, got {self.keypoint!r}"
            )


# ---- key points --------------------------------------------------------------------------------


def _coords(flat: Tensor, width: int) -> Tensor:  # (...) flat indices -> (..., 2) (row, col)
    return torch.stack([flat // width, flat % width], dim=-1)


def local_peaks(maps: Tensor, min_distance: int) -> Tensor:
    """(K, H, W) -> bool (K, H, W): skimage's peak_local_max rule (defaults) by max-pooling: equal
    to the max of its (2d+1) x (2d+1) window, above the map's minimum, d or more from the border."""
    d = int(min_distance)
    k = 2 * d + 1  # separable: a row max, then a column max (41 + 41 comparisons, not 41^2)
    pooled = F.max_pool2d(maps[:, None], (1, k), stride=1, padding=(0, d))
    pooled = F.max_pool2d(pooled, (k, 1), stride=1, padding=(d, 0))[:, 0]
    low = maps.flatten(1).amin(1)[:, None, None]
    peak = (maps == pooled) & (maps > low)
    inner = torch.zeros_like(peak)
    inner[:, d : maps.shape[1] - d, d : maps.shape[2] - d] = True
    return peak & inner


def find_keypoints(
    maps: Tensor, strategy: str, *, topk: int = 5, min_distance: int = 20, radius: float = 128.0
) -> Tensor:
    """(K, H, W) maps -> (K, 2) int64 (row, col) key points (module docstring); a map without a
    point, or a point on row 0 or column 0, gives (H // 2, W // 2)."""
    k, h, w = maps.shape
    flat = maps.flatten(1)
    best = _coords(flat.argmax(1), w)  # (K, 2); ties: the first, as numpy's argmax
    found = torch.ones(k, dtype=torch.bool, device=maps.device)
    if strategy in ("ctopk", "ctopk-w"):
        values = flat.masked_fill(~local_peaks(maps, min_distance).flatten(1), float("-inf"))
        top, index = values.topk(min(topk, h * w), dim=1)  # (K, k), highest first
        valid = torch.isfinite(top)
        yx = _coords(index, w).double()  # (K, k, 2)
        if strategy == "ctopk":
            near = (yx - best[:, None].double()).square().sum(-1) < radius**2
            weight = (valid & near).double()
        else:
            weight = torch.where(valid, top.double(), 0.0)
        total = weight.sum(1)
        found = total > 0
        mean = (weight[..., None] * yx).sum(1) / total.clamp_min(1e-30)[:, None]
        best = mean.floor().long()
    elif strategy not in ("max", "cmax"):
        raise WsmlError(f"keypoint must be one of {', '.join(KEYPOINTS)}, got {strategy!r}")
    centre = torch.where(torch.arange(2, device=maps.device) == 0, h // 2, w // 2)  # no copy
    bad = ~found | (best == 0).any(1)
    return torch.where(bad[:, None], centre, best)


@dataclass(frozen=True)
class Cuts:
    """The batch's cuts: image index (K,), key point (K, 2) (row, col) in input pixels, and
    target (K, L) (one-hot of the cut's class; max: the image's positive labels)."""

    image: Tensor
    points: Tensor
    target: Tensor


def scaled(value: float, size: tuple[int, int]) -> float:
    """A pixel constant of the release (at 512 px) for an input of ``size``."""
    return value * min(size) / REFERENCE_SIZE


def plan_cuts(cam: Tensor, positive: Tensor, size: tuple[int, int], cfg: OassConfig) -> Cuts:
    """(N, L, h, w) raw CAM (no grad), (N, L) bool positives -> the batch's cuts."""
    ncam = normalise_cam(cam.detach().float())
    if cfg.keypoint == "max":
        image = torch.arange(len(cam), device=cam.device)
        target = positive.float()
        maps = (ncam * target[..., None, None]).amax(1)  # (N, h, w)
    else:
        image, cls = positive.nonzero(as_tuple=True)
        target = F.one_hot(cls, cam.shape[1]).float()
        maps = ncam[image, cls]  # (K, h, w)
    if len(maps) == 0:
        return Cuts(image, torch.zeros(0, 2, dtype=torch.long, device=cam.device), target)
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    points = find_keypoints(
        up,
        cfg.keypoint,
        topk=cfg.topk,
        min_distance=max(1, round(scaled(cfg.min_distance, size))),
        radius=scaled(cfg.radius, size),
    )
    return Cuts(image, points, target)


# ---- cutting and stitching ---------------------------------------------------------------------


def nearest_index(position: Tensor, in_size: Tensor | int, out_size: Tensor | int) -> Tensor:
    """torch's "nearest" source index for output ``position``: floor(position * (in / out)) in
    float32 (as F.interpolate computes it), at most in - 1."""
    if isinstance(in_size, Tensor) or isinstance(out_size, Tensor):  # sizes stay where they are
        size = in_size if isinstance(in_size, Tensor) else out_size
        scale = torch.div(_float32(in_size, size), _float32(out_size, size))
    else:  # a float32 quotient, as the tensors' (no host-to-device copy of a scalar)
        scale = float(np.float32(in_size) / np.float32(out_size))
    index = (position.float() * scale).floor().long()
    if isinstance(in_size, Tensor):
        return torch.minimum(index, in_size - 1)
    return index.clamp_max(in_size - 1)


def _float32(x: Tensor | int, like: Tensor) -> Tensor:
    return x.float() if isinstance(x, Tensor) else torch.full_like(like, x, dtype=torch.float32)


def crop_size(size: tuple[int, int]) -> tuple[int, int]:
    """The release's 256 x 256 quadrant crops at 512 px, scaled."""
    return tuple(max(1, round(256 * s / REFERENCE_SIZE)) for s in size)


def cut_crops(images: Tensor, image: Tensor, points: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) images, K cuts -> (4K, C, P, Q): per cut the quadrants above-left,
    above-right, below-left, below-right of its key point, each resized (nearest) to ``size``."""
    h, w = images.shape[-2:]
    p, q = size
    r, c = points[:, 0], points[:, 1]
    zero = torch.zeros_like(r)
    rows = (torch.stack([zero, zero, r, r], 1), torch.stack([r, r, h - r, h - r], 1))  # start, len
    cols = (torch.stack([zero, c, zero, c], 1), torch.stack([c, w - c, c, w - c], 1))
    i = torch.arange(p, device=images.device)
    j = torch.arange(q, device=images.device)
    row_idx = rows[0][..., None] + nearest_index(i, rows[1][..., None], p)  # (K, 4, P)
    col_idx = cols[0][..., None] + nearest_index(j, cols[1][..., None], q)  # (K, 4, Q)
    out = images[image[:, None, None, None], :, row_idx[..., None], col_idx[:, :, None, :]]
    return out.permute(0, 1, 4, 2, 3).flatten(0, 1)  # (K, 4, P, Q, C) -> (4K, C, P, Q)


def stitch(crop_cam: Tensor, points: Tensor, size: tuple[int, int], grid: tuple[int, int]):
    """(4K, L, p, q) quadrant CAMs -> (K, L, h, w): each resized (nearest) to its quadrant on the
    (h, w) grid, split at key point * h / H (the release's key point // 16), at least 1."""
    k = len(points)
    cams = crop_cam.unflatten(0, (k, 4))
    p, q = cams.shape[-2:]
    (big_h, big_w), (h, w) = size, grid
    a = (points[:, 0] * h // big_h).clamp_min(1)[:, None]  # (K, 1) grid rows above the cut
    b = (points[:, 1] * w // big_w).clamp_min(1)[:, None]
    y = torch.arange(h, device=points.device)[None]
    x = torch.arange(w, device=points.device)[None]
    top, left = y < a, x < b  # (K, h), (K, w)
    sy = torch.where(top, nearest_index(y, p, a), nearest_index(y - a, p, h - a))
    sx = torch.where(left, nearest_index(x, q, b), nearest_index(x - b, q, w - b))
    quad = 2 * (~top).long()[:, :, None] + (~left).long()[:, None, :]  # (K, h, w)
    kk = torch.arange(k, device=points.device)[:, None, None]
    out = cams[kk, quad, :, sy[:, :, None], sx[:, None, :]]  # (K, h, w, L)
    return out.permute(0, 3, 1, 2)


# ---- losses, schedule, teacher -----------------------------------------------------------------


@contextlib.contextmanager
def untuned_convolutions() -> Iterator[None]:
    """cuDNN's benchmark off: it tunes every convolution once per input shape, and the
    teacher's crop batch (4 per cut, cuts per positive label) changes size every step."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def mlsml(logits: Tensor, target: Tensor) -> Tensor:
    """MultiLabelSoftMarginLoss: -mean [y log sigmoid(z) + (1 - y) log sigmoid(-z)]."""
    return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()


def alpha_re_at(step: int, total_steps: int, cfg: OassConfig) -> float:
    """min(alpha_re * step / (T * alpha_schedule), alpha_re)."""
    ramp = total_steps * cfg.alpha_schedule
    return cfg.alpha_re if ramp <= 0 else min(cfg.alpha_re * step / ramp, cfg.alpha_re)


def teacher_decay(step: int, cap: float) -> float:
    """Mean teacher's decay after optimiser step ``step`` (0-based): min(1 - 1/(step + 1), cap)."""
    return min(1.0 - 1.0 / (step + 1), cap)


class Oass(Method):
    """``forward`` is the classification MLSML on observed labels (unknowns as negatives);
    ``training_step`` adds the puzzle terms. The teacher (``bind_model``; not for ``max``) is a
    submodule, so it travels in the method's state_dict and checkpoints."""

    stackable = False  # batch-wide losses and cuts; end to end only

    def __init__(self, info, config, num_rows, num_classes, *, observed=None, **kw):
        super().__init__(info, config, num_rows, num_classes, observed=observed, **kw)
        self.total_steps = config.epochs * self.steps_per_epoch  # handed by the run
        self.teacher = None
        self._pairs: list[tuple[Tensor, Tensor]] = []  # (teacher, student) parameters
        self.register_buffer("teacher_steps", torch.zeros((), dtype=torch.int64))
        self._steps: int | None = None  # teacher_steps on the host (read once, then counted)
        main = get_rank() == 0
        if observed is not None and observed.has_unknown() and main:
            print(
                "notice: oass trains on full labels in its paper; here unknown labels count as "
                "negatives and only observed positives are cut (an extension)",
                file=sys.stderr,
            )

    def compute(self, logits, batch, *, epoch, step):
        positive = (batch["observed"].to(logits.device) == 1).float()
        return {"loss": mlsml(logits, positive)}

    def bind_model(self, model) -> None:
        if self.config.keypoint == "max":  # the student is its own teacher
            return
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self._pairs = list(zip(self.teacher.parameters(), model.parameters(), strict=True))

    @torch.no_grad()
    def after_step(self) -> None:
        if not self._pairs:
            return
        # the decay as a Python float: a 0-dim device tensor as _foreach_lerp_'s weight is read
        # back every step; the step count is read once (after creation or a restore)
        if self._steps is None:
            self._steps = int(self.teacher_steps)
        decay = teacher_decay(self._steps, self.config.teacher_decay)
        teacher, student = zip(*self._pairs, strict=True)
        torch._foreach_lerp_(list(teacher), list(student), 1.0 - decay)
        self.teacher_steps += 1
        self._steps += 1

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._steps = None  # a restored count: read it again

    def training_step(self, net, batch, *, epoch, step, autocast):
        cfg = self.config
        x = batch["input"]
        positive = batch["observed"].to(x.device) == 1
        size = (x.shape[-2], x.shape[-1])
        own = cfg.keypoint == "max"
        if not own and self.teacher is None:
            raise WsmlError(f"method {self.name}: bind_model(model) builds the teacher first")
        planned: dict[str, Cuts] = {}

        def crops(cam: Tensor) -> Tensor | None:  # called inside the model's forward
            planned["cuts"] = cuts = plan_cuts(cam, positive, size, cfg)
            if own and len(cuts.image):
                return cut_crops(x, cuts.image, cuts.points, crop_size(size))
            return None

        with autocast():
            out = net(x, crops=crops, with_cam=True)
        cuts = planned["cuts"]
        logits, cam = out["logits"].float(), out["cam"].float()
        self._check_batch(logits, batch, epoch, step)
        class_loss = mlsml(logits, positive.float())
        p_class = re = torch.zeros((), device=x.device)
        if len(cuts.image):
            crop_cam = out.get("crop_cam")
            if not own:  # 4 crops per cut: a batch size of its own every step
                pieces = cut_crops(x, cuts.image, cuts.points, crop_size(size))
                with torch.no_grad(), autocast(), untuned_convolutions():
                    crop_cam = self.teacher.cam(pieces)
            stitched = stitch(crop_cam.float(), cuts.points, size, cam.shape[-2:])
            p_class = mlsml(stitched.mean((2, 3)), cuts.target)
            re = ((cam[cuts.image] - stitched).abs() * cuts.target[..., None, None]).mean()
        alpha_re = alpha_re_at(step, self.total_steps, cfg)
        loss = class_loss + cfg.alpha_p * p_class + alpha_re * re
        self.check_finite(loss, logits, epoch=epoch, step=step)
        return {
            "loss": loss,
            "class_loss": class_loss.detach(),
            "p_class_loss": p_class.detach(),
            "re_loss": re.detach(),
            "alpha_re": torch.full((), alpha_re, device=x.device),  # a fill, not a copy
            "cuts": torch.full((), float(len(cuts.image)), device=x.device),
        }


register_method(
    MethodInfo(
        name="oass",
        paper=PAPER,
        summary="object-aware puzzle self-supervision on CAM key points (EMA teacher), "
        "class-specific instance logits",
        regimes=("full", "single-positive", "partial"),
        config=OassConfig,
        method_class=Oass,
        defaults_source=SOURCE,
        needs_observed=True,  # to say at creation when unknown labels are treated as negatives
        settings=("e2e",),
        create_model=create_oass_model,
        run_defaults={"backbone": "resnet50", "preset": "puzzle512"},
    )
)
