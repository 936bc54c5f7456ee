"""MarDini: masked-autoregressive planning at low resolution + a light diffusion generator at high resolution.

``planner`` (MAR, full spatio-temporal attention over low-resolution frame latents), ``generator`` (a light
DiT conditioned on the planning signal), ``attention`` (Identity Attention), ``masking`` (which frames are
known), ``latents`` (per-frame image-VAE latents at two resolutions). The pipeline is
:class:`reelkit.pipelines.masked_video.MaskedVideoPipeline`; the recipe ``reelkit train mardini``.
"""

from reelkit.mardini.generator import MarDiniGenerator
from reelkit.mardini.planner import MarDiniPlanner

__all__ = ["MarDiniGenerator", "MarDiniPlanner"]
