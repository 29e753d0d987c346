"""Shard set -> batches: the DALI graph (GPU or CPU), the PyTorch/webdataset fallback, augmentation presets."""
