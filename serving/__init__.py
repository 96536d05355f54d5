"""BentoML serving of the genops models (see docs/serving.md).

`serving.service:GenOps` is the service; `genops bento build` packs the registry's
champions into the BentoML model store and builds the Bento. This package imports `models/`
but never `pipelines/`, so a Bento carries torch and BentoML only.
"""
