"""The Stable Video Diffusion family: SVD, SVD-XT, AnimateLCM-SVD-xt (image to video)."""
