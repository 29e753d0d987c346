"""The one DDP trainer, the method registry, metrics, checkpoints and reports."""
