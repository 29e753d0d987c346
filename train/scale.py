"""Checks that a run fits its data before any work: the method's state against the training
split's size (ROLE's dense estimator), the observed view and the feature cache against every
split."""

from __future__ import annotations

from shards import caches
from shards.base.errors import WsmlError
from shards.shardset import ShardSet
from train.methods import MethodConfig, MethodInfo

SPLITS = ("train", "val", "test")


def check_scale(
    ss: ShardSet, info: MethodInfo, mcfg: MethodConfig, view: str, features: str | None = None
) -> None:
    """Raise, naming the number that does not fit, before a table or a cache is read."""
    rows = int(ss.split("train")["num_samples"])
    info.method_class.check_size(rows, len(ss.classes), mcfg)
    if features is not None:
        cached = caches.get_cache(ss.root, features)["splits"]
        for split in (s for s in SPLITS if s in cached):
            want = int(ss.split(split)["num_samples"])
            if int(cached[split]["rows"]) != want:
                raise WsmlError(
                    f"features {features!r} have {cached[split]['rows']} rows for split "
                    f"{split}, its label table has {want}: cache them again"
                )
    if view in ("full", "clean"):
        return
    have = ss.regimes[view]["splits"]
    missing = [s for s in SPLITS if s in ss.manifest["splits"] and s not in have]
    if missing:
        raise WsmlError(
            f"observed view {view!r} of {ss.root} has no {', '.join(missing)} split (it has "
            f"{', '.join(have) or 'none'}); make it again with cli.py observe {ss.root}"
        )
