"""Diffusion family: DDPM-trained UNet, DDIM sampler, classifier-free guidance."""

from models.diffusion.config import DiffusionConfig
from models.diffusion.model import Diffusion

__all__ = ["Diffusion", "DiffusionConfig"]
