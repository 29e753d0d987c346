"""What every floor shares: the error type, the registry pattern, ``key=value`` options, click
helpers and atomic file writing. Imports nothing of the project and never torch."""
