"""The adapters file: trained bottleneck adapters (:mod:`dynprune.adapters`) in one safetensors file.

The file's metadata names the model the adapters were trained for; loading them for another
model is a ``ValueError`` naming both models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from dynprune.adapters import FILE_FORMAT, PARAMS, BottleneckAdapter, adapter_layers
from dynprune.fileio import atomic_path, read_safetensors

if TYPE_CHECKING:
    from dynprune.models import PrunableLM



__all__ = ["load_adapters", "save_adapters"]


def save_adapters(adapters: Mapping[int, BottleneckAdapter], path: str | Path, model_id: str, bottleneck: int) -> Path:
    """Write adapters to one safetensors file atomically (temporary file + rename).

    Tensors are ``layers.{i}.down.weight``, ``layers.{i}.down.bias``, ``layers.{i}.up.weight``,
    ``layers.{i}.up.bias`` in the adapters' dtype; the metadata holds ``model_id``,
    ``bottleneck``, ``hidden``, ``layers`` (a JSON list) and ``format``.
    """
    if not adapters:
        raise ValueError("no adapters to save")
    path = Path(path)
    hidden = {m.hidden for m in adapters.values()}
    widths = {m.bottleneck for m in adapters.values()}
    if len(hidden) != 1:
        raise ValueError(f"adapters have different hidden sizes {sorted(hidden)}")
    if widths != {bottleneck}:
        raise ValueError(f"adapters have bottleneck {sorted(widths)}, but bottleneck={bottleneck} was given")
    tensors = {
        f"layers.{i}.{name}": t.detach().cpu().contiguous().clone()
        for i, m in adapters.items()
        for name, t in m.state_dict().items()
    }
    meta = {
        "format": FILE_FORMAT,
        "model_id": model_id,
        "bottleneck": str(bottleneck),
        "hidden": str(hidden.pop()),
        "layers": json.dumps(sorted(int(i) for i in adapters)),
    }
    with atomic_path(path) as tmp:  # a crash never leaves a half-written adapters file
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_adapters(path: str | Path, lm: PrunableLM) -> dict[int, BottleneckAdapter]:
    """Read an adapters file made for ``lm``; the adapters come in ``lm``'s dtype and device, frozen.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a damaged or foreign file (the message names it), adapters of another
            hidden size, or adapters trained for another model (the message names both ids).
    """
    path = Path(path)
    tensors, meta = read_safetensors(path, "adapters file")
    if meta.get("format") != FILE_FORMAT:
        raise ValueError(f"{path} is not an adapters file (format {meta.get('format')!r}, expected {FILE_FORMAT!r})")
    try:
        model_id = meta["model_id"]
        bottleneck = int(meta["bottleneck"])
        hidden = int(meta["hidden"])
        layers = [int(i) for i in json.loads(meta["layers"])]
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path} has damaged adapter metadata: {e}") from e
    if hidden != lm.geometry.hidden_size:
        raise ValueError(
            f"{path} holds adapters of hidden size {hidden} (for {model_id!r}); "
            f"model {lm.model_id!r} has hidden size {lm.geometry.hidden_size}"
        )
    if model_id != lm.model_id:
        raise ValueError(f"{path} holds adapters trained for {model_id!r}, not for this model {lm.model_id!r}")
    adapter_layers(lm, layers)
    out: dict[int, BottleneckAdapter] = {}
    for i in layers:
        state = {}
        for name in PARAMS:
            key = f"layers.{i}.{name}"
            if key not in tensors:
                raise ValueError(f"{path} is damaged: tensor {key!r} is missing")
            state[name] = tensors[key]
        m = BottleneckAdapter(hidden, bottleneck, dtype=lm.dtype, device=lm.device)
        try:
            m.load_state_dict({k: v.to(lm.dtype) for k, v in state.items()})
        except RuntimeError as e:  # shape mismatch
            raise ValueError(f"{path} is damaged: layer {i} tensors do not fit bottleneck {bottleneck}: {e}") from e
        out[i] = m.eval().requires_grad_(False)
    return out
