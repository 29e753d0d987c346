"""CUB-200-2011 (being written)."""
