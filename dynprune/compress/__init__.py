"""Static compression baselines: layer removal (+ LoRA healing), sparsity, quantisation, distillation.

Modules: :mod:`~dynprune.compress.removal` (which layers, and deleting them),
:mod:`~dynprune.compress.healing` (LoRA / full training with CE or KD loss, early stopping),
:mod:`~dynprune.compress.sparsity` (magnitude, Wanda, 2:4), :mod:`~dynprune.compress.quantize`
(FP16 / BF16 / INT8 / NF4), :mod:`~dynprune.compress.pipeline` (one function per method),
:mod:`~dynprune.compress.folder` (atomic save / load with metadata),
:mod:`~dynprune.compress.evaluate` (size, speed, perplexity, fidelity, task score) and
:mod:`~dynprune.compress.cli` (``dynprune compress ...``).
"""
