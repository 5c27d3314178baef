"""How a basis convolution computes its output, kept apart from how it stores its weights
(:class:`basisconv.layers.BasisConv2d` is the API and dispatches here).

Each form takes plain tensors, so a fused GPU kernel can take a form's place behind the
same layer. ``COMBINE_MODES`` names the forms a layer's ``combine=`` may choose:

* ``"stacked"`` and ``"split"``: plain PyTorch ops (:mod:`.torch_ops`);
* ``"fused"``: one Triton kernel (:mod:`.triton_conv`) computes the basis conv and the
  combination and writes the output once, with a hand-written backward, the two as one
  PyTorch custom op that ``torch.compile`` keeps in its graph (:mod:`.fused`). It
  runs on CUDA tensors (on CPU only under ``TRITON_INTERPRET=1``, which is how it is
  tested); elsewhere, or without triton, it falls back to ``"stacked"`` with a one-time
  warning. On an H200 it is exact and slower than dense (``docs/speed.md``);
* ``"auto"``: per shape, the fastest of ``stacked``, ``dense`` (the materialized weight
  in one dense conv) and ``fused`` on the device, measured there on first use
  (:mod:`.auto`).

Apart from the forms, :mod:`.norm` computes a basis conv with the batch norm and ReLU
after it as one GEMM of the basis maps (the norm folded into the combination), for layers
built with ``fuse_norm=True``; with ``combine="fused"`` the batch moments are one
Triton kernel (:mod:`.triton_moments`), the fold from them to the folded matrix one each
way (:mod:`.triton_fold`), and that GEMM, its ReLU and their backward two
(:mod:`.triton_combine`), the full-width output written once and read once; with
``combine="auto"`` each conv-norm(-ReLU) shape runs the fastest of the fold in standard ops,
the fold through the kernels and the unfused modules, measured on the device
(:mod:`.auto_norm`).
"""

from .auto import auto_forward
from .auto_norm import auto_conv_batch_norm
from .fused import fused_forward
from .norm import basis_conv_batch_norm
from .torch_ops import (channels_last, combination_rows, dense_forward, materialized_weight,
                        split_forward, stacked_forward, without_autocast)

COMBINE_MODES = ("stacked", "split", "fused", "auto")

__all__ = ["COMBINE_MODES", "auto_conv_batch_norm", "auto_forward", "basis_conv_batch_norm",
           "channels_last", "combination_rows", "dense_forward", "fused_forward",
           "materialized_weight", "split_forward", "stacked_forward", "without_autocast"]
