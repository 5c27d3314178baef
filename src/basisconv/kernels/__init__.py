"""How a basis convolution computes its output, kept apart from how it stores its weights
(:class:`basisconv.layers.BasisConv2d` is the API and dispatches here).

Each form takes plain tensors, so a fused GPU kernel can take a form's place behind the
same layer. ``COMBINE_MODES`` names the forms a layer's ``combine=`` may choose.
"""

from .torch_ops import split_forward, stacked_forward

COMBINE_MODES = ("stacked", "split")

__all__ = ["COMBINE_MODES", "split_forward", "stacked_forward"]
