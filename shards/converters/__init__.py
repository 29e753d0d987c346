"""Converters: each reads one raw layout, checks it, and yields records. Importing this package
imports every module in it (a new converter file needs no list), which registers them all in
:data:`shards.convert.source.CONVERTERS`; the Open Images readers (``oi_images``, ``oi_labels``)
register nothing."""

from shards.base.registry import import_modules

import_modules(__name__, __path__)
