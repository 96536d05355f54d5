"""Diffusion family: DDPM-trained UNet; DDIM, DPM-Solver++(2M) or UniPC sampling; CFG."""

from models.diffusion.config import DiffusionConfig
from models.diffusion.model import Diffusion

__all__ = ["Diffusion", "DiffusionConfig"]
