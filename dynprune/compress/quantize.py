"""Quantisation: FP16 / BF16 casts, dynamic INT8 on the CPU, NF4 through bitsandbytes on CUDA.

- ``"fp16"`` / ``"bf16"``: every floating weight cast (half the bytes of float32).
- ``"int8"``: ``torch.ao.quantization.quantize_dynamic`` on the decoder projections (weights
  int8 per tensor, activations quantised on the fly; CPU kernels only). It still exists in
  torch 2.13 but is deprecated in favour of torchao (not a dependency here); its
  deprecation warnings are silenced where it is called. ``lm_head`` stays float (it is
  tied to the embedding in the models used here).
- ``"nf4"``: 4-bit NormalFloat through ``transformers``' ``BitsAndBytesConfig``; needs a CUDA
  device and the ``bitsandbytes`` package, and says so clearly elsewhere.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynprune.compress.healing import PROJECTIONS

FORMATS = ("fp16", "bf16", "int8", "nf4")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is one of ``FORMATS``, else raise ``ValueError``."""
    if fmt not in FORMATS:
        raise ValueError(f"quantisation format must be one of {FORMATS}, got {fmt!r}")
    return fmt


def require_cuda_bnb(device: torch.device | str) -> None:
    """Raise unless ``device`` is CUDA and bitsandbytes is importable (NF4 needs both)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(
            f"INT4 NF4 quantisation needs CUDA (bitsandbytes 4-bit kernels); device is {dev}"
            + ("" if torch.cuda.is_available() else " and no CUDA GPU is available on this machine")
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ModuleNotFoundError("INT4 NF4 quantisation needs bitsandbytes: pip install bitsandbytes") from e


def cast(model: nn.Module, fmt: str) -> nn.Module:
    """Cast ``model``'s weights in place to FP16 or BF16 and return it.

    Buffers that are not weights (the rotary ``inv_freq`` tables) stay float32, as
    ``from_pretrained(dtype=...)`` leaves them, so the model equals its reloaded folder.
    """
    if fmt not in DTYPES:
        raise ValueError(f"cast format must be one of {sorted(DTYPES)}, got {fmt!r}")
    buffers = {n: b.clone() for n, b in model.named_buffers() if "inv_freq" in n}
    model.to(DTYPES[fmt])
    for name, value in buffers.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, value)
    return model


def quantize_int8_dynamic(model: nn.Module) -> nn.Module:
    """Dynamic INT8 (``quantize_dynamic``) of the decoder projections of a float32 CPU model, in place."""
    dev = next(model.parameters()).device
    if dev.type != "cpu":
        raise ValueError(f"dynamic INT8 runs on the CPU only; model is on {dev}")
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError(f"dynamic INT8 needs a float32 model, got {next(model.parameters()).dtype}")
    from torch.ao.quantization import quantize_dynamic

    decoder_layers = model.model.layers
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.ao.quantization (moving to torchao) but still ships it.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        names = {n for n, m in decoder_layers.named_modules() if isinstance(m, nn.Linear)}
        targets = {n for n in names if n.rsplit(".", 1)[-1] in PROJECTIONS}
        quantize_dynamic(decoder_layers, qconfig_spec=targets, dtype=torch.qint8, inplace=True)
    return model


def quantize_nf4(model: nn.Module, tokenizer: Any, device: torch.device | str) -> nn.Module:
    """A 4-bit NF4 copy of ``model`` on CUDA (bitsandbytes), via a temporary Hugging Face folder."""
    require_cuda_bnb(device)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tmp = Path(tempfile.mkdtemp(prefix="dynprune-nf4-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        q = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=config, device_map={"": torch.device(device)})
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return q.eval().requires_grad_(False)


def quantize(model: nn.Module, fmt: str, tokenizer: Any = None) -> nn.Module:
    """Quantise ``model`` to ``fmt`` (in place for fp16 / bf16 / int8; a new model for nf4)."""
    check_format(fmt)
    if fmt in DTYPES:
        return cast(model, fmt)
    if fmt == "int8":
        return quantize_int8_dynamic(model)
    return quantize_nf4(model, tokenizer, next(model.parameters()).device)
