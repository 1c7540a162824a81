"""LTX-Video text to video (diffusers LTXPipeline): T5, LTXVideoTransformer3DModel, the LTX video VAE."""
