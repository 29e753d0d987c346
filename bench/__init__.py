"""Every benchmark and its command (``cli.py bench …``): the harness (timing rounds, ratios,
peak RSS, the machine), the markdown blocks they write into ``docs/`` and ``make bench-docs``,
and one module per bench. It spans every floor, so it sits above them: only ``cli.py`` (and the
tests) import it."""
