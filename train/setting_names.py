"""The names of the settings a run trains in, declared once. Their objects (rules, model, data)
are ``train/settings.py``'s; this leaf imports nothing, so the config, the methods' registry and
the commands read the names without importing the settings."""

SETTINGS = ("linear", "e2e")
