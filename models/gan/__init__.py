"""GAN family: DCGAN / WGAN-GP generator and discriminator with an f-AnoGAN encoder."""

from models.gan.config import GANConfig
from models.gan.model import GAN

__all__ = ["GAN", "GANConfig"]
