"""Video and image VAEs: the CV-VAE (4x temporal, 8x spatial) and the image VAE it stays compatible with.

>>> from reelkit.vae import load_cvvae, load_image_vae, reconstruct
>>> vae = load_cvvae()  # the bundled checkpoint  # doctest: +SKIP
>>> video = reconstruct(vae, clip)  # (C, 1+4k, H, W) in [-1, 1] -> same shape  # doctest: +SKIP
"""

from reelkit.vae.cvvae import CVVAE
from reelkit.vae.image_vae import build_image_vae, load_image_vae
from reelkit.vae.ops import compat_decode, image_vae_reconstruct, load_cvvae, reconstruct, uniform_sampling_reconstruct

__all__ = ["CVVAE", "build_image_vae", "compat_decode", "image_vae_reconstruct", "load_cvvae", "load_image_vae",
           "reconstruct", "uniform_sampling_reconstruct"]
