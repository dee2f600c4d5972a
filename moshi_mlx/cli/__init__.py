"""Command line: `moshi-mlx <command>`; each command module parses arguments and calls the API."""
