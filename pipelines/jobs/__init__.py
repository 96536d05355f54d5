"""The pipeline's steps as plain functions, one module per role. The `genops` CLI (hence every
`dvc repro` stage) calls them; the Prefect flow runs those stages. Import the submodule you
need: this package imports nothing, so a stage depends only on the step it runs (dvc.yaml).

    training.py    genops train
    judge.py       genops train-judge
    evaluation.py  genops evaluate, and re-measuring a registered version
    promotion.py   genops register: leaderboard, candidates, the paired promotion gate
    reports.py     Markdown for decisions and the promotion history
"""
