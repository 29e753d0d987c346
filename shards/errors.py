"""The project's error type: expected failures (bad input, wrong layout) that the CLI turns
into a one-line ``Error: ...`` with exit code 1, without a traceback."""


class WsmlError(Exception):
    """An expected failure whose message tells the user what is wrong and what was expected."""
