"""Text to video on a video U-Net: ModelScope (TextToVideoSDPipeline) and AnimateDiff."""
