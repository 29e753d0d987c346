"""The registries of presets and loader backends, for the commands' choices (``bench loader``'s
command is ``bench/commands.py``'s)."""

from __future__ import annotations

from shards.base.clitools import (
    choices,
)


@choices("preset")
def _presets():
    from pipelines.presets import PRESETS

    return PRESETS


@choices("loader")
def _backends():
    from pipelines.loader import BACKENDS

    return BACKENDS
