"""antdiff: diffusion training as multi-task learning (ANT, Go et al., NeurIPS 2023)."""

__version__ = "0.1.0"
