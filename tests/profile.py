"""The tests' one tiny-config profile: every small config a test trains or runs, defined once.

- `TINY`: per family, the smallest model configs that still learn something in a few dozen CPU
  steps (the contract suite, the family tests, the trainer and DDP tests);
- `TINY_MLP_AE`: the fastest model of all, an MLP autoencoder, for tests about the trainer and
  serving machinery rather than a family;
- `TINY_PARAMS`: a whole `params.yaml` for pipeline runs in a temporary project (flows, lifecycle):
  8 training steps, small evaluation and gate sizes, and a model section per family.

A family added to models/spec.py needs its entry here (tests/models/test_contract.py says so).
"""

from __future__ import annotations

from typing import Any

TINY: dict[str, dict[str, Any]] = {
    "autoencoder": {
        "channels": (8, 16),
        "latent_dim": 8,
        "lr": 3e-3,
        "prior_momentum": 0.1,
        "denoise_std": 0.2,  # exercises the generator in training_step (resume test)
        "mask_prob": 0.1,
    },
    "vae": {
        "channels": (8, 16),
        "hidden_dim": 64,
        "latent_dim": 8,
        "lr": 3e-3,
        "kl_warmup_steps": 0,
        "max_iwae_k": 64,
    },
    "gan": {
        "latent_dim": 8,
        "label_embed_dim": 4,
        "g_width": 8,
        "d_width": 8,
        "e_width": 8,
        "lr": 1e-3,
        "monitor_every": 2,
        "monitor_batch": 8,
        "monitor_warmup": 0,  # tiny runs: flag from the first step
        "encoder_start_step": 10,
        "ema_decay": 0.9,
        "score": "dknn",  # the product's score (params.yaml); izif is tested in test_gan.py
    },
    "diffusion": {
        "base_channels": 8,
        "channel_mults": (1, 2),
        "attention": False,
        "timesteps": 100,
        "sample_steps": 4,
        "score_timesteps": (10, 30),
        "score_draws": 2,
        "score_steps": 2,
        "lr": 1e-2,
        "warmup_steps": 5,
        "ema_decay": 0.5,
        "bf16_autocast": False,
    },
}

TINY_MLP_AE: dict[str, Any] = {"arch": "mlp", "hidden_dims": [64], "latent_dim": 8}

TINY_PARAMS: dict[str, Any] = {
    "train": {
        "steps": 8,
        "batch_size": 32,
        "val_every": 4,
        "checkpoint_every": 4,
        "num_threads": 1,
        "log_every": 4,
        "progress": False,
        "seed": 0,
    },
    "autoencoder": {"model": {"arch": "mlp", "hidden_dims": [32], "latent_dim": 4}},
    "vae": {
        "model": {
            "channels": [8, 16],
            "hidden_dim": 32,
            "latent_dim": 4,
            "kl_warmup_steps": 4,
            "max_iwae_k": 64,
        }
    },
    "gan": {
        "model": {
            "latent_dim": 8,
            "label_embed_dim": 4,
            "g_width": 8,
            "d_width": 8,
            "e_width": 8,
            "monitor_every": 2,
            "monitor_batch": 8,
            "encoder_start_step": 5,
            "ema_decay": 0.9,
            "score": "dknn",
        }
    },
    "diffusion": {
        "model": {
            "base_channels": 8,
            "channel_mults": [1, 2],
            "attention": False,
            "timesteps": 50,
            "sample_steps": 2,
            "score_timesteps": [10],
            "score_steps": 1,
            "score_draws": 1,
            "warmup_steps": 2,
            "ema_decay": 0.5,
            "bf16_autocast": False,
        }
    },
    "judge": {"epochs": 1, "max_steps": 10, "batch_size": 64, "progress": False},
    # the generation gate draws fresh samples: a small cap keeps a tiny day-2 gate quick
    "registry": {
        "margin": {"generation": 0.05, "anomaly": 0.002},
        "sequential": {"round_size": 100, "block_size": 20, "max_per_model": 300, "min_blocks": 5},
        "n_bootstrap": 50,
        "min_unseen": 20,  # a re-split of 5,000 digits leaves ~50 test digits unseen by v1
    },
    "evaluate": {
        "n_samples": 40,
        "anomaly_per_kind": 8,
        "likelihood_max_images": 16,
        "n_plot": 16,
        "sample_batch_size": 40,
    },
}
