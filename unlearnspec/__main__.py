"""`python -m unlearnspec` runs the CLI."""

from unlearnspec.cli import main

main()
