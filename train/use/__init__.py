"""train.use."""
