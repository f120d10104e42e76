"""erase: remove a class or concept from a trained diffusion model, and measure that it is gone."""

__version__ = "0.1.0"
