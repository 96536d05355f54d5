"""`python -m pipelines.cli` is `genops` (for environments without the console script)."""

from pipelines.cli import main

main()
