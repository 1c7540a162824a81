"""Wan 2.1 / 2.2 text to video (diffusers WanPipeline): UMT5, one or two WanTransformer3DModel experts, the Wan VAE."""
