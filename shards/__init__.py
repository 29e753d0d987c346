"""Raw datasets -> shard sets: converters (read only), one writer, label regimes, manifest reading.

Never imports torch or DALI.
"""

__version__ = "0.1.0"
FORMAT_VERSION = 1
