"""One function per compression method: each returns a :class:`Compressed` model, never touching the source.

- :func:`compress_layers`: static layer removal (last / ShortGPT block influence / Gromov
  angular block), optionally healed with LoRA (next-token or KD loss);
- :func:`compress_sparsity`: magnitude, Wanda or 2:4 pruning;
- :func:`compress_quantize`: FP16, BF16, dynamic INT8 (CPU) or NF4 (CUDA);
- :func:`compress_distill`: a layer-removed student trained on the teacher's logits (KL + CE),
  every weight trainable, through the same loop as healing.

Calibration and training windows come from the shipped prompt set's *train* split; the
evaluation (:mod:`dynprune.compress.evaluate`) uses the *test* split.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from dynprune.compress.data import prompt_texts, split_prompts, token_windows
from dynprune.compress.folder import CompressionMetadata, model_size_bytes
from dynprune.compress.healing import TrainConfig, split_windows, train_student
from dynprune.compress.quantize import check_format, quantize
from dynprune.compress.removal import removed_copy, select_layers
from dynprune.compress.sparsity import SparsityConfig, prune, semi_structured_supported, to_semi_structured
from dynprune.validation import require_at_least, require_in_range

if TYPE_CHECKING:
    import torch

    from dynprune.models import PrunableLM

MB = 2**20


@dataclass(frozen=True)
class DataConfig:
    """Windows cut from the train split for calibration and training.

    Attributes:
        seq_len: Tokens per window.
        max_windows: Windows at most (fewer when the split is short).
        val_fraction: Share of the windows held out for early stopping.
        seed: Seed of the train / validation split.
    """

    seq_len: int = 64
    max_windows: int = 256
    val_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        require_at_least(self, 2, "seq_len", "max_windows")
        require_in_range(self, 0, 1, "val_fraction", interval="()")


@dataclass
class Compressed:
    """A compressed model in memory.

    Attributes:
        model: The model that runs (quantised, pruned ...).
        to_save: What goes to disk (``model`` itself, except dynamic INT8: its float source).
        metadata: Method, settings, sizes, reports.
    """

    model: nn.Module
    to_save: nn.Module
    metadata: CompressionMetadata


def train_windows(lm: PrunableLM, data: DataConfig) -> torch.Tensor:
    """Windows of the shipped train split (prompt texts and gold answers)."""
    return token_windows(lm, prompt_texts(split_prompts("train")), data.seq_len, data.max_windows)


def _metadata(
    lm: PrunableLM, model: nn.Module, method: str, settings: dict[str, Any], **kw: Any
) -> CompressionMetadata:
    dtype = next(model.parameters()).dtype
    return CompressionMetadata(
        method=method,
        settings=settings,
        source_model=lm.name,
        source_model_id=lm.model_id,
        size_mb=model_size_bytes(model) / MB,
        source_size_mb=model_size_bytes(lm.model) / MB,
        num_layers=len(model.model.layers),
        dtype=str(dtype).removeprefix("torch."),
        **kw,
    )


def _check_source(lm: PrunableLM) -> None:
    if lm.active_plan is not None:
        raise RuntimeError("compress the full model: call outside lm.apply(...)")


def compress_layers(
    lm: PrunableLM,
    selection: str = "block_influence",
    k: int = 1,
    heal: str | None = None,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
) -> Compressed:
    """Remove ``k`` layers chosen by ``selection``; with ``heal="ce"`` or ``"kd"`` heal with LoRA."""
    _check_source(lm)
    if heal not in (None, "ce", "kd"):
        raise ValueError(f"heal must be None, 'ce' or 'kd', got {heal!r}")
    data = data or DataConfig()
    windows = train_windows(lm, data)
    layers = select_layers(lm, selection, k, windows=windows)
    model = removed_copy(lm, layers)
    settings: dict[str, Any] = {"selection": selection, "k": k, "heal": heal, "data": asdict(data)}
    report: dict[str, Any] = {}
    if heal is not None:
        base = train or TrainConfig()
        config = TrainConfig(**{**asdict(base), "loss": heal, "lora": True})
        tr, va = split_windows(windows, data.val_fraction, data.seed)
        model, train_report = train_student(model, tr, va, config, teacher=lm.model if heal == "kd" else None)
        settings["train"] = asdict(config)
        report["healing"] = train_report.to_dict()
    return Compressed(model, model, _metadata(lm, model, "layers", settings, removed_layers=layers, report=report))


def compress_distill(
    lm: PrunableLM,
    selection: str = "block_influence",
    k: int = 1,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
) -> Compressed:
    """A student with ``k`` layers removed, every weight trained on the teacher's logits (KL + CE)."""
    _check_source(lm)
    data = data or DataConfig()
    config = train or TrainConfig(loss="kd", kd_weight=0.5, lora=False, lr=5e-5)
    if config.loss != "kd" or config.lora:
        raise ValueError(f"distillation trains every weight on KD: need loss='kd', lora=False, got {config}")
    windows = train_windows(lm, data)
    layers = select_layers(lm, selection, k, windows=windows)
    student = removed_copy(lm, layers)
    tr, va = split_windows(windows, data.val_fraction, data.seed)
    model, train_report = train_student(student, tr, va, config, teacher=lm.model)
    settings = {"selection": selection, "k": k, "train": asdict(config), "data": asdict(data)}
    meta = _metadata(lm, model, "distill", settings, removed_layers=layers, report={"training": train_report.to_dict()})
    return Compressed(model, model, meta)


def compress_sparsity(lm: PrunableLM, config: SparsityConfig, data: DataConfig | None = None) -> Compressed:
    """Prune a copy of the model to ``config.sparsity`` (per output row) or to 2:4."""
    _check_source(lm)
    data = data or DataConfig()
    windows = train_windows(lm, data) if config.method != "magnitude" else None
    model = copy.deepcopy(lm.model)
    reached = prune(model, config, windows)
    report: dict[str, Any] = {"sparsity_reached": reached, "semi_structured_kernels": False}
    if config.method == "2:4" and semi_structured_supported(next(model.parameters()).device):
        report["semi_structured_modules"] = to_semi_structured(model)
        report["semi_structured_kernels"] = True
    settings = {**asdict(config), "data": asdict(data)}
    return Compressed(model, model, _metadata(lm, model, "sparsity", settings, report=report))


def compress_quantize(lm: PrunableLM, fmt: str) -> Compressed:
    """Quantise a copy of the model to ``fmt`` (``fp16``, ``bf16``, ``int8``, ``nf4``)."""
    _check_source(lm)
    check_format(fmt)
    if fmt == "nf4":
        from dynprune.compress.quantize import require_cuda_bnb

        require_cuda_bnb(lm.device)  # fail before copying anything
    base = copy.deepcopy(lm.model)
    if fmt == "int8":
        model = quantize(copy.deepcopy(base), "int8")
        meta = _metadata(lm, model, "quantize", {"format": fmt}, quantization="int8_dynamic")
        return Compressed(model, base, meta)
    model = quantize(base, fmt, lm.tokenizer)
    quant = "nf4" if fmt == "nf4" else None
    meta = _metadata(lm, model, "quantize", {"format": fmt}, quantization=quant)
    if fmt == "nf4":
        meta.dtype = "bfloat16"
    return Compressed(model, model, meta)
