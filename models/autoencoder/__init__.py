"""Bottleneck autoencoder family (MLP or conv), optionally denoising."""

from models.autoencoder.config import AutoencoderConfig
from models.autoencoder.model import Autoencoder

__all__ = ["Autoencoder", "AutoencoderConfig"]
