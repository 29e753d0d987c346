"""One call from a dataset name and a raw folder to a shard set (what ``cli.py shard`` runs)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import shards.converters  # noqa: F401  (registers the converters)
from shards.base.errors import WsmlError
from shards.convert.scan import Workers
from shards.convert.source import CONVERTERS, parse_options
from shards.convert.writer import ShardOptions, write_shard_set

DEFAULT_REGIMES = ("single-positive",)


def convert(
    dataset: str,
    root: Path,
    out: Path,
    converter_options: dict[str, str],
    options: dict,
    workers: int = 1,
    **kwargs,
) -> dict:
    """Open ``root`` with the named converter (layout checked before anything is written),
    then write the shard set; returns the manifest. Without ``regimes`` in ``options`` the
    source's own default views are made (single-positive for fully labelled sources); the
    spec ``none`` makes none."""
    info = CONVERTERS.get(dataset)
    if not root.exists():
        raise WsmlError(f"--root {root} does not exist")
    opts = parse_options(info.options, converter_options, f"dataset {dataset}")
    options = dict(options)
    given = options.pop("regimes", None)  # None or (): the source's defaults
    write_options = ShardOptions(**options, regimes=tuple(r for r in given or () if r != "none"))
    write_options.check_values()
    # The worker pool starts before the source is read, so forked workers stay small.
    with Workers(workers) as pool:
        source = info.open(root, opts)
        if not given:
            default = source.default_regimes
            write_options = replace(
                write_options, regimes=DEFAULT_REGIMES if default is None else default
            )
        return write_shard_set(
            source,
            out,
            write_options,
            _jsonable(asdict(opts)),
            workers=pool,
            allows_missing=info.allows_missing_images,
            **kwargs,
        )


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
