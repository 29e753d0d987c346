"""``cli.py report``: a static page (and report.md) of a study's runs. Reading runs and tables
(runs.py, tables.py) are plain Python; figures.py alone imports matplotlib."""
