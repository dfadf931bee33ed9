"""igds-fast: Information-Guided Diffusion Sampling for dataset distillation."""

__version__ = "0.1.0"
