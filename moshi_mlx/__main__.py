"""`python -m moshi_mlx ...`: the same command as `moshi-mlx ...`."""

from .cli.main import main

if __name__ == "__main__":
    main()
