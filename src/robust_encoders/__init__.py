"""robust-encoders: adversarially robust concept-erased text encoders for Stable Diffusion."""

__version__ = "0.1.0"
