"""Variational autoencoder family: Gaussian encoder, Bernoulli or Gaussian decoder."""

from models.vae.config import VAEConfig
from models.vae.model import VAE

__all__ = ["VAE", "VAEConfig"]
