"""One module per dvc.yaml stage; the `genops` CLI calls them. Each imports only what its stage
needs (tests/pipelines/stages/test_dvc_deps.py derives dvc.yaml's deps from these imports)."""
