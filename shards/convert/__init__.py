"""Raw dataset -> shard set: the converters' common ``Source`` and its checks, the scan of the
images, the shard plan, the one writer (tars in ``tar_writer.py``, the ``--out`` folder's state in
``out_state.py``, the worker's shard in ``shardwork.py``) and ``convert``, what ``cli.py shard``
runs."""
