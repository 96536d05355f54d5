"""Training: the loop with resumable checkpoints, data-parallel training, machine resources."""
