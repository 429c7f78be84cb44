"""Compressed model folders: Hugging Face format plus a ``dynprune_compress.json`` metadata file.

A folder is written whole or not at all: everything goes to a temporary folder beside the
destination, which is renamed into place at the end (``os.replace``); an existing
destination is refused unless ``force`` is given, and then replaced only after the new
folder is complete.

Dynamic INT8 (``torch.ao.quantization.quantize_dynamic``) has no Hugging Face
serialisation: its folder holds the float weights it was made from, and the metadata's
``"quantization": "int8_dynamic"`` makes :func:`load_compressed` re-apply the (deterministic)
quantisation, so the reloaded model computes the same logits.
"""

from __future__ import annotations

import datetime
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynprune.fileio import atomic_dir, atomic_write_json
from dynprune.validation import require_at_least, require_one_of

METADATA_FILE = "dynprune_compress.json"
EVAL_FILE = "eval.json"
FORMAT_VERSION = 1
METHODS = ("layers", "sparsity", "quantize", "distill")


@dataclass
class CompressionMetadata:
    """What a compressed folder holds and how it was made.

    Attributes:
        method: One of ``METHODS``.
        settings: The method's settings (JSON-serialisable).
        source_model: Spec of the model it was made from (``"smollm2-135m"``, a path ...).
        source_model_id: The source's ``PrunableLM.model_id``.
        size_mb: Size of the model's weights as it runs (MiB), see :func:`model_size_bytes`.
        source_size_mb: The same for the source model.
        num_layers: Decoder layers of the compressed model.
        removed_layers: Source layer indices removed (layer methods).
        dtype: Floating dtype of the weights.
        quantization: ``None``, ``"int8_dynamic"`` (re-applied on load) or ``"nf4"`` (bitsandbytes).
        report: Training / method report (healing curve, sparsity reached ...).
        created: UTC time stamp.
        format: Folder format version.
    """

    method: str
    settings: dict[str, Any]
    source_model: str
    source_model_id: str
    size_mb: float
    source_size_mb: float
    num_layers: int
    removed_layers: tuple[int, ...] = ()
    dtype: str = "float32"
    quantization: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        require_one_of(self, "method", METHODS)
        require_one_of(self, "quantization", (None, "int8_dynamic", "nf4"))
        require_at_least(self, 1, "num_layers")
        self.removed_layers = tuple(int(i) for i in self.removed_layers)

    @property
    def compression_ratio(self) -> float:
        """Source size / compressed size."""
        return self.source_size_mb / self.size_mb

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the metadata file holds)."""
        return {
            "format": self.format,
            "method": self.method,
            "settings": self.settings,
            "source_model": self.source_model,
            "source_model_id": self.source_model_id,
            "size_mb": self.size_mb,
            "source_size_mb": self.source_size_mb,
            "compression_ratio": self.compression_ratio,
            "num_layers": self.num_layers,
            "removed_layers": list(self.removed_layers),
            "dtype": self.dtype,
            "quantization": self.quantization,
            "report": self.report,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionMetadata:
        """Inverse of :meth:`to_dict`; ``ValueError`` for a missing or unknown field value."""
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"metadata format {data.get('format')!r} is not the supported {FORMAT_VERSION}")
        keys = (
            "method", "settings", "source_model", "source_model_id", "size_mb", "source_size_mb",
            "num_layers", "removed_layers", "dtype", "quantization", "report", "created",
        )  # fmt: skip
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"metadata lacks the field(s) {missing}")
        return cls(**{k: data[k] for k in keys})


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state as it runs: what ``torch.save(state_dict)`` writes.

    Tied weights count once (shared storages are written once); dynamic-INT8 linears count
    their packed int8 weights; a sparse-by-mask weight counts in full (dense storage).
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def is_compressed_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a compression metadata file."""
    return (Path(path) / METADATA_FILE).is_file()


def read_metadata(path: str | os.PathLike[str]) -> CompressionMetadata:
    """The metadata of a compressed folder; ``ValueError`` when the folder has none or it is damaged."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no compressed model folder at {folder}")
    meta = folder / METADATA_FILE
    if not meta.is_file():
        raise ValueError(
            f"{folder} has no {METADATA_FILE}; expected a folder written by `dynprune compress` "
            "(a plain Hugging Face folder loads with load_model(path))"
        )
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{meta} must hold a JSON object, got {type(data).__name__}")
    return CompressionMetadata.from_dict(data)


def save_compressed(
    model: nn.Module,
    tokenizer: Any,
    out: str | os.PathLike[str],
    metadata: CompressionMetadata,
    *,
    evaluation: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``model`` (Hugging Face format), its tokenizer, metadata and evaluation to ``out`` atomically.

    For ``int8_dynamic`` pass the float model it was quantised from: the folder stores that
    and the loader re-quantises. Raises ``FileExistsError`` if ``out`` exists and ``force`` is False.
    """
    dest = Path(out)
    if dest.exists() and not force:
        raise FileExistsError(f"{dest} already exists; pass force=True (--force) to replace it")
    check_replaceable(dest)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / METADATA_FILE, metadata.to_dict())
        if evaluation is not None:
            atomic_write_json(tmp / EVAL_FILE, evaluation)
    return dest


def check_replaceable(dest: str | os.PathLike[str]) -> None:
    """Refuse to replace ``dest`` unless it is missing, empty or a compressed folder (it holds the metadata file).

    ``--force`` replaces the whole folder, so it must never be a folder this module did not write
    (a Hugging Face model folder passed as ``--out`` would lose its weights).
    """
    dest = Path(dest)
    if not dest.exists():
        return
    if not dest.is_dir():
        raise ValueError(f"--out {dest} exists and is not a folder; choose a new folder")
    if any(dest.iterdir()) and not (dest / METADATA_FILE).is_file():
        raise ValueError(f"--out {dest} is not a compressed model folder (it has no {METADATA_FILE}); --force only "
                         "replaces folders dynprune compress wrote: choose a new or empty folder")


def write_evaluation(folder: str | os.PathLike[str], evaluation: dict[str, Any]) -> Path:
    """(Re)write the evaluation record of an existing compressed folder atomically."""
    read_metadata(folder)  # refuse a folder that is not a compressed model
    return atomic_write_json(Path(folder) / EVAL_FILE, evaluation)


def load_compressed(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, Any, CompressionMetadata]:
    """Load a compressed folder: ``(model, tokenizer, metadata)``.

    ``dtype=None`` keeps the dtype the folder was saved in. ``int8_dynamic`` folders are
    re-quantised (CPU only); ``nf4`` folders need CUDA and bitsandbytes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dynprune.compress.quantize import quantize_int8_dynamic, require_cuda_bnb

    folder = Path(path)
    meta = read_metadata(folder)
    dev = torch.device(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if meta.quantization == "nf4":
        require_cuda_bnb(dev)
        model = AutoModelForCausalLM.from_pretrained(folder, device_map={"": dev})
    else:
        load_dtype = dtype if dtype is not None else getattr(torch, meta.dtype)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=load_dtype, attn_implementation="sdpa")
        model.to(dev)
    model.eval().requires_grad_(False)
    if len(model.model.layers) != meta.num_layers:
        raise ValueError(f"{folder} holds {len(model.model.layers)} layers but its metadata says {meta.num_layers}")
    if meta.quantization == "int8_dynamic":
        if dev.type != "cpu":
            raise ValueError(f"{folder} is dynamic INT8, which runs on the CPU only; got device {dev}")
        model = quantize_int8_dynamic(model)
    return model, tokenizer, meta
