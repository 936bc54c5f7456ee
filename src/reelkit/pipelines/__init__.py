"""Diffusers pipelines of the embedded default."""
