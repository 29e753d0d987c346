"""The demo dataset's content (``shards.synth.digits`` writes it): each image's digit classes, drawn
from a latent scene type with structured co-occurrence, and its mosaic of real handwritten
digit scans (scikit-learn's load_digits) over a gradient and noise background, with each
digit's ink box. Changing anything here changes the demo's bytes and its leaderboard."""

from __future__ import annotations

import numpy as np

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# Latent scene types: (name, favoured digits, probability). Digit 2 is in no group but has a
# high prior, so it goes with anything; "mixed" scenes follow the prior alone.
SCENES = (
    ("round", (0, 6, 8), 0.25),
    ("straight", (1, 4, 7), 0.30),
    ("curly", (3, 5, 9), 0.25),
    ("mixed", (), 0.20),
)
SCENE_BOOST = 20.0  # weight multiplier of a scene's favoured digits
CLASS_PRIOR = (1.0, 1.8, 3.0, 0.8, 1.2, 0.4, 0.9, 1.4, 0.5, 0.3)  # global imbalance: 9, 5, 8 rare
COUNT_P = (0.45, 0.30, 0.17, 0.08)  # probability of 1, 2, 3, 4 digits in an image
MAX_OVERLAP = 0.25  # max share of a digit's ink box covered by another digit's box
INK = 0.25  # alpha above which a pixel counts as ink (for the bounding box)
N_RAMPS = 16  # directions of the background gradient
NOISE_SIGMA = 5.0  # standard deviation of the background noise, in grey levels
VAL_FRACTION = 0.25


def split_digits(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Split the digit scans once (stratified), so val handwriting is unseen in train."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images.astype(np.float32) / 16.0, 0.0, 1.0)
    pools: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for c in range(len(NAMES)):
        members = rng.permutation(np.flatnonzero(digits.target == c))
        n_val = max(1, round(len(members) * VAL_FRACTION))
        pools["val"].append(images[members[:n_val]])
        pools["train"].append(images[members[n_val:]])
    return pools


def sample_labels(rng: np.random.Generator, n: int) -> list[list[int]]:
    """Digit classes of each image (repeats allowed), from a latent scene type per image."""
    scene_p = np.array([p for _, _, p in SCENES])
    weights = np.tile(np.array(CLASS_PRIOR), (len(SCENES), 1))
    for s, (_, favoured, _) in enumerate(SCENES):
        weights[s, list(favoured)] *= SCENE_BOOST
    cdf = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
    scenes = rng.choice(len(SCENES), size=n, p=scene_p)
    counts = rng.choice(len(COUNT_P), size=n, p=np.array(COUNT_P)) + 1
    u = rng.random((n, len(COUNT_P)))
    classes = (u[:, :, None] > cdf[scenes][:, None, :]).sum(-1)
    classes = np.minimum(classes, len(NAMES) - 1)
    plans = [classes[i, : counts[i]].tolist() for i in range(n)]
    cover_classes(rng, plans)
    return plans


def cover_classes(rng: np.random.Generator, plans: list[list[int]]) -> None:
    """Put each class absent from the split into some image (only matters for small splits)."""
    counts = np.bincount(np.concatenate(plans), minlength=len(NAMES))
    for c in np.flatnonzero(counts == 0).tolist():
        roomy = [i for i, p in enumerate(plans) if len(p) < len(COUNT_P)]
        if roomy:
            plans[roomy[rng.integers(len(roomy))]].append(c)
        else:
            spare = [(i, j) for i, p in enumerate(plans) for j, d in enumerate(p) if counts[d] > 1]
            if not spare:
                continue
            i, j = spare[rng.integers(len(spare))]
            counts[plans[i][j]] -= 1
            plans[i][j] = c
        counts[c] += 1


class Painter:
    """Renders one split's mosaics from cached digit patches, gradient ramps and a noise field."""

    def __init__(self, pool: list[np.ndarray], size: int, rng: np.random.Generator) -> None:
        self.pool, self.size = pool, size
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        angles = np.linspace(0.0, 2 * np.pi, N_RAMPS, endpoint=False)[:, None, None]
        ramps = np.cos(angles) * x + np.sin(angles) * y
        ramps -= ramps.min(axis=(1, 2), keepdims=True)
        self.ramps = (ramps / ramps.max(axis=(1, 2), keepdims=True)).astype(np.float32)
        noise = rng.standard_normal((3, 2 * size, 2 * size), dtype=np.float32)
        self.noise = noise * np.float32(NOISE_SIGMA)
        self.matrices: dict[int, np.ndarray] = {}
        self.patches: dict[tuple[int, int, int], tuple[np.ndarray, tuple[int, ...]]] = {}

    def patch(self, c: int, k: int, side: int) -> tuple[np.ndarray, tuple[int, ...]]:
        """Digit ``k`` of class ``c`` upscaled to ``side`` px (alpha 0..1) and its ink box."""
        key = (c, k, side)
        if key not in self.patches:
            if side not in self.matrices:
                self.matrices[side] = upscale_matrix(side, self.pool[c].shape[1])
            m = self.matrices[side]
            alpha = np.clip(m @ self.pool[c][k] @ m.T * np.float32(1.15), 0.0, 1.0)
            rows = np.flatnonzero((alpha > INK).any(1))
            cols = np.flatnonzero((alpha > INK).any(0))
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            self.patches[key] = (alpha, box)
        return self.patches[key]

    def background(self, rng: np.random.Generator) -> np.ndarray:
        """Dark canvas (channels first, float32 0..255): a coloured gradient plus mild noise."""
        size = self.size
        ramp = self.ramps[rng.integers(N_RAMPS)]
        base = rng.uniform(0.0, 40.0, 3).astype(np.float32)
        tilt = rng.uniform(0.0, 35.0, 3).astype(np.float32)
        x, y = rng.integers(0, size + 1, size=2)
        canvas = tilt[:, None, None] * ramp + self.noise[:, y : y + size, x : x + size]
        canvas += base[:, None, None]
        return canvas

    def render(
        self, rng: np.random.Generator, classes: list[int]
    ) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
        """One mosaic (uint8 RGB, height x width x 3) and its (class, [x, y, w, h]) boxes."""
        size = self.size
        canvas = self.background(rng)
        top = 0.44 if len(classes) <= 2 else 0.34
        low, high = max(8, round(0.16 * size)), max(9, round(top * size))
        boxes: list[tuple[int, ...]] = []
        objects = []
        for c in classes:
            side = int(rng.integers(low, high + 1))
            alpha, box = self.patch(c, int(rng.integers(len(self.pool[c]))), side)
            x, y = place(rng, box, side, size, boxes)
            tint = rng.uniform(0.3, 1.0, 3)
            colour = (tint / tint.max() * rng.uniform(190.0, 255.0)).astype(np.float32)
            region = canvas[:, y : y + side, x : x + side]
            np.maximum(region, colour[:, None, None] * alpha, out=region)
            boxes.append((x + box[0], y + box[1], x + box[2], y + box[3]))
            w, h = box[2] - box[0], box[3] - box[1]
            objects.append((c, [float(x + box[0]), float(y + box[1]), float(w), float(h)]))
        np.clip(canvas + np.float32(0.5), 0, 255, out=canvas)
        return np.dstack(canvas.astype(np.uint8)), objects


def upscale_matrix(side: int, src: int) -> np.ndarray:
    """(side, src) bicubic interpolation weights (Keys, a = -0.5), edges clamped, rows sum to 1."""
    centre = (np.arange(side) + 0.5) * src / side - 0.5
    taps = np.floor(centre)[:, None] + np.arange(-1, 3)
    t = np.abs(centre[:, None] - taps)
    a = -0.5
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    weights = np.where(t <= 1, near, np.where(t < 2, far, 0.0))
    matrix = np.zeros((side, src))
    rows = np.repeat(np.arange(side)[:, None], taps.shape[1], axis=1)
    np.add.at(matrix, (rows, np.clip(taps, 0, src - 1).astype(int)), weights)
    return (matrix / matrix.sum(1, keepdims=True)).astype(np.float32)


def place(
    rng: np.random.Generator, box: tuple[int, ...], side: int, size: int, boxes: list
) -> tuple[int, int]:
    """Top-left corner for a patch: first of 16 random tries whose ink box is mostly uncovered."""
    corners = rng.integers(0, size - side + 1, size=(16, 2))
    if not boxes:
        return int(corners[0, 0]), int(corners[0, 1])
    ink = np.array(box, dtype=np.float64)
    cand = np.concatenate([corners + ink[:2], corners + ink[2:]], axis=1)  # (16, 4) x0 y0 x1 y1
    old = np.array(boxes, dtype=np.float64)
    wx = np.minimum(cand[:, None, 2], old[None, :, 2]) - np.maximum(cand[:, None, 0], old[:, 0])
    wy = np.minimum(cand[:, None, 3], old[None, :, 3]) - np.maximum(cand[:, None, 1], old[:, 1])
    inter = np.clip(wx, 0, None) * np.clip(wy, 0, None)
    area_new = (ink[2] - ink[0]) * (ink[3] - ink[1])
    area_old = (old[:, 2] - old[:, 0]) * (old[:, 3] - old[:, 1])
    worst = (inter / np.minimum(area_new, area_old[None, :])).max(1)
    ok = np.flatnonzero(worst < MAX_OVERLAP)
    pick = int(ok[0]) if len(ok) else int(worst.argmin())
    return int(corners[pick, 0]), int(corners[pick, 1])
