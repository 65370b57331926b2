"""sjc: Score Jacobian Chaining, lifting pretrained 2D diffusion models to 3D."""

__version__ = "0.1.0"
