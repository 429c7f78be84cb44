"""Importance calibration: which layers, heads and FFN channels matter.

One pass of the full model over N calibration windows (default 64 x 128 tokens)
with activation hooks measures three scores (higher = more important):

- **Block influence** per layer (ShortGPT, Men et al. 2024, eq. 1):
  ``BI_i = 1 - E_t[cos(x_i,t, x_{i+1},t)]`` between a layer's input and output
  hidden states; a layer that barely turns the residual stream is cheap to drop.
- **Head importance**: mean L2 norm of each query head's contribution to the
  residual stream, ``|| W_o[:, h] z_h ||`` (the head's slice of the o_proj
  input times its slice of o_proj), over all calibration tokens.
- **Channel importance** (Wanda's ``|W| * ||X||``, Sun et al. 2023, aggregated
  per channel as in structured variants such as FLAP): ``||a_c||_2 * ||W_down[:, c]||_2``
  where ``a_c`` is the input of down_proj for channel ``c`` over all tokens.

Scores are saved to a safetensors file keyed by the model's identity; loading a
file made for another model is a ``ValueError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from dynprune.fileio import atomic_path, read_safetensors
from dynprune.types import Importance

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

log = logging.getLogger(__name__)

DEFAULT_N_PROMPTS = 64
DEFAULT_SEQ_LEN = 128


def separator_id(lm: PrunableLM) -> int:
    """The token that ends each text when texts are joined into one stream: EOS, or BOS if there is no EOS."""
    return lm.tokenizer.eos_token_id if lm.tokenizer.eos_token_id is not None else lm.bos_id


def token_stream(lm: PrunableLM, texts: Sequence[str]) -> list[int]:
    """The texts' tokens joined into one stream, each text followed by :func:`separator_id`."""
    sep = separator_id(lm)
    stream: list[int] = []
    for text in texts:
        stream.extend(lm.encode_text(text))
        stream.append(sep)
    return stream


def calibration_windows(lm: PrunableLM, texts: Sequence[str], n_prompts: int, seq_len: int) -> torch.Tensor:
    """``[n_prompts, seq_len]`` token windows cut from the texts joined by EOS (cycled if short)."""
    if n_prompts < 1 or seq_len < 2:
        raise ValueError(f"need n_prompts >= 1 and seq_len >= 2, got {n_prompts} and {seq_len}")
    if seq_len > lm.geometry.max_position:
        raise ValueError(f"seq_len {seq_len} exceeds the model's context {lm.geometry.max_position}")
    sep = separator_id(lm)
    stream = token_stream(lm, texts)
    if not stream or all(t == sep for t in stream):
        raise ValueError("calibration texts are empty")
    need = n_prompts * seq_len
    while len(stream) < need:
        stream = stream + stream
    return torch.tensor(stream[:need], dtype=torch.long).view(n_prompts, seq_len)


def default_texts() -> list[str]:
    """Calibration texts: the training split of the shipped prompt set."""
    from dynprune.tasks import load_prompts

    return [p.text for p in load_prompts("dynprune", split="train")]


@torch.inference_mode()
def calibrate(
    lm: PrunableLM,
    texts: Sequence[str] | None = None,
    n_prompts: int = DEFAULT_N_PROMPTS,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch_size: int = 8,
) -> Importance:
    """Measure block influence, head and channel importance of the unpruned model."""
    if lm.active_plan is not None:
        raise RuntimeError("calibrate the full model: call outside lm.apply(...)")
    windows = calibration_windows(lm, default_texts() if texts is None else texts, n_prompts, seq_len)
    layers = lm._layers
    n = len(layers)
    cos_sum = torch.zeros(n, dtype=torch.float64)
    head_sum = [torch.zeros(lm.geometry.num_heads[i], dtype=torch.float64) for i in range(n)]
    chan_sq = [torch.zeros(lm.geometry.intermediate_size[i], dtype=torch.float64) for i in range(n)]
    tokens = 0
    handles = []

    def layer_hook(i: int):  # noqa: ANN202 - hook factory
        def hook(module, args, kwargs, output):  # noqa: ANN001, ANN202
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            cos_sum[i] += cos.double().sum().cpu()

        return hook

    def head_hook(i: int):  # noqa: ANN202
        attn = layers[i].self_attn
        d = attn.head_dim

        def hook(module, args):  # noqa: ANN001, ANN202
            z = args[0]
            b, t, _ = z.shape
            w = module.weight.view(module.out_features, -1, d)  # [hidden, heads, d]
            # contribution of head h to the residual stream: z_h @ W_o[:, h].T -> norm over hidden
            contrib = torch.einsum("bthd,khd->bthk", z.view(b, t, -1, d).float(), w.float())
            head_sum[i] += contrib.norm(dim=-1).double().sum(dim=(0, 1)).cpu()

        return hook

    def chan_hook(i: int):  # noqa: ANN202
        def hook(module, args):  # noqa: ANN001, ANN202
            chan_sq[i] += (args[0].float() ** 2).double().sum(dim=(0, 1)).cpu()

        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(layer_hook(i), with_kwargs=True))
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(i)))
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(chan_hook(i)))
        for start in range(0, n_prompts, batch_size):
            batch = windows[start : start + batch_size].to(lm.device)
            lm.model(input_ids=batch, use_cache=False, logits_to_keep=1)
            tokens += batch.numel()
    finally:
        for h in handles:
            h.remove()
    channels = []
    for i, layer in enumerate(layers):
        w_norm = layer.mlp.down_proj.weight.detach().double().norm(dim=0).cpu()  # ||W_down[:, c]||
        channels.append(tuple((chan_sq[i].sqrt() * w_norm).tolist()))
    return Importance(
        model_id=lm.model_id,
        block_influence=tuple((1.0 - cos_sum / tokens).tolist()),
        heads=tuple(tuple((s / tokens).tolist()) for s in head_sum),
        channels=tuple(channels),
        n_prompts=n_prompts,
        seq_len=seq_len,
    )


def check_importance(imp: Importance, lm: PrunableLM) -> None:
    """Raise ``ValueError`` unless ``imp`` was measured on ``lm`` and fits its geometry."""
    if imp.model_id != lm.model_id:
        raise ValueError(f"importance was calibrated on {imp.model_id!r}, not on this model {lm.model_id!r}")
    g = lm.geometry
    ok = (
        len(imp.block_influence) == g.num_layers
        and [len(h) for h in imp.heads] == list(g.num_heads)
        and [len(c) for c in imp.channels] == list(g.intermediate_size)
    )
    if not ok:
        raise ValueError(f"importance shapes do not match the geometry of {lm.model_id!r}")


def save_importance(imp: Importance, path: str | Path) -> Path:
    """Write ``imp`` to a safetensors file atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"block_influence": torch.tensor(imp.block_influence, dtype=torch.float64)}
    for i, (h, c) in enumerate(zip(imp.heads, imp.channels, strict=True)):
        tensors[f"heads.{i}"] = torch.tensor(h, dtype=torch.float64)
        tensors[f"channels.{i}"] = torch.tensor(c, dtype=torch.float64)
    meta = {
        "model_id": imp.model_id,
        "n_prompts": str(imp.n_prompts),
        "seq_len": str(imp.seq_len),
        "format": "1",
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_importance(path: str | Path, model_id: str | None = None) -> Importance:
    """Read an importance file; with ``model_id``, refuse a file made for another model."""
    path = Path(path)
    tensors, meta = read_safetensors(path, "importance file")
    n = len([k for k in tensors if k.startswith("heads.")])
    try:
        bi = tuple(tensors["block_influence"].tolist())
        heads = tuple(tuple(tensors[f"heads.{i}"].tolist()) for i in range(n))
        channels = tuple(tuple(tensors[f"channels.{i}"].tolist()) for i in range(n))
    except KeyError as e:
        raise ValueError(f"{path} is not a valid importance file: tensor {e} is missing") from e
    if "model_id" not in meta:
        raise ValueError(f"{path} has no model_id in its metadata; not an importance file")
    if model_id is not None and meta["model_id"] != model_id:
        raise ValueError(f"{path} was calibrated on {meta['model_id']!r}, not on {model_id!r}")
    return Importance(
        model_id=meta["model_id"],
        block_influence=bi,
        heads=heads,
        channels=channels,
        n_prompts=int(meta.get("n_prompts", 0)),
        seq_len=int(meta.get("seq_len", 0)),
    )


def importance_path(
    model_id: str, n_prompts: int = DEFAULT_N_PROMPTS, seq_len: int = DEFAULT_SEQ_LEN
) -> Path:
    """Cache file for a model's importance at these calibration settings."""
    from dynprune.models import cache_dir

    safe = model_id.replace("/", "_").replace("@", "-")
    return cache_dir() / "importance" / f"{safe}-n{n_prompts}-s{seq_len}.safetensors"


def load_or_calibrate(lm: PrunableLM, n_prompts: int | None = None, seq_len: int | None = None) -> Importance:
    """Load the cached calibration of ``lm`` at these settings (default: 64 x 128), or calibrate and cache it."""
    n_prompts = DEFAULT_N_PROMPTS if n_prompts is None else n_prompts
    seq_len = DEFAULT_SEQ_LEN if seq_len is None else seq_len
    path = importance_path(lm.model_id, n_prompts, seq_len)
    if path.is_file():
        try:
            return load_importance(path, lm.model_id)
        except ValueError as e:
            log.warning("ignoring damaged importance cache %s: %s", path, e)
    log.info("calibrating %s on %d x %d tokens", lm.model_id, n_prompts, seq_len)
    imp = calibrate(lm, n_prompts=n_prompts, seq_len=seq_len)
    try:
        save_importance(imp, path)
    except OSError as e:  # a read-only or full cache must not throw away a calibration that succeeded
        from dynprune.fileio import describe_os_error

        log.warning("importance of %s not cached, it is calibrated again next time (%s)", lm.model_id,
                    describe_os_error(e, "set $DYNPRUNE_CACHE to a writable folder to keep it"))
    return imp
