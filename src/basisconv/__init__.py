"""basisconv: basis convolutions and sensitivity-based layer selection for CNNs.

A reproduction of *Layer-Specific Optimization: Sensitivity Based Convolution Layers
Basis Search* (Alekseev et al., 2024, arXiv:2408.06024).
"""

__version__ = "0.1.0"
