"""Research beside the product: textbook baselines, the one-class protocol (not in dvc repro)."""
