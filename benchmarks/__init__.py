"""Benchmark harness: vidrt engines against the diffusers baseline, one run, same inputs."""
