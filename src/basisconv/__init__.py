"""basisconv: basis convolutions and sensitivity-based layer selection for CNNs.

A reproduction of *Layer-Specific Optimization: Sensitivity Based Convolution Layers
Basis Search* (Alekseev et al., 2024, arXiv:2408.06024).

On your own model (README, "Use it on your own model"), the entry points are:

- ``basisconv.layers.BasisConv2d``: the basis convolution; ``BasisConv2d.from_conv(conv,
  num_basis)`` converts a trained ``nn.Conv2d``, ``layer.to_conv()`` gives it back.
- ``basisconv.surgery.apply_basis(model, layers, num_basis)``: replaces convs by name or
  pattern (``conv_layers(model)`` lists the names), each at ``num_basis`` or at its own
  size (``layers`` a name -> size mapping); ``basis_report(model)`` lists each basis
  layer's size, to rebuild it for a state_dict.
- ``basisconv.dense_form.to_dense(model)``: undoes it, every basis layer a plain conv.
- ``basisconv.scan.layer_sensitivity(model, num_basis, evaluate, finetune)``: which
  layers a basis hurts least, with your own evaluation and fine-tune;
  ``basisconv.selection.pick_layers`` chooses from its table by a policy.
- ``basisconv.cost.model_cost(model, input_shape)``: parameters and FLOPs per layer.

Import each from its module (``import basisconv`` itself loads none of them);
``basisconv.models.build_model`` gives the CIFAR ResNets of the reproduction.
"""

__version__ = "0.1.0"
