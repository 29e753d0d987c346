"""Converters: each reads one raw layout, checks it, and yields records. Importing this package
registers them all in :data:`shards.convert.source.CONVERTERS`."""

from shards.converters import coco, cub, nuswide, openimages, openimages_v6, table, voc  # noqa: F401
