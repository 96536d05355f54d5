"""Data: MNIST-format IDX and splits, the default sources, the GX gate, DVC versioning and
image-hash lineage."""
