"""NUS-WIDE (being written)."""
