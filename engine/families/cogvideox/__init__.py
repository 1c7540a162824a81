"""CogVideoX: diffusers CogVideoXPipeline and CogVideoXImageToVideoPipeline."""
