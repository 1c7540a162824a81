"""Wan 2.1 / 2.2 (diffusers WanPipeline, and WanImageToVideoPipeline for TI2V-5B): UMT5, one or two WanTransformer3DModel experts, the Wan VAE."""
