"""`python -m unlearnspec` runs the CLI."""

from unlearnspec.cli import main

if __name__ == "__main__":  # not when a spawned worker process re-imports the parent's main module
    main()
