"""Training bottleneck adapters (:mod:`dynprune.adapters`) by white-box distillation.

Training (:func:`train_adapters`) is white-box distillation of every layer at once:
one forward pass of the *full* model over a batch of calibration windows records each
layer's input ``x_i`` and output ``y_i`` (hooks on the decoder layers), then every
adapter takes optimisation steps on ``MSE(adapter_i(x_i), y_i)`` over that batch's tokens
before the next batch is recorded. One epoch is one pass over the data for all layers;
memory holds one batch of records, never the whole data set.

The texts (or prompts) are split before packing into windows, so the reconstruction
MSE reported per layer (identity = skipping, and trained) is measured on held-out text.
With ``only_correct`` and prompts with ground truth, only prompts the full model answers
correctly are trained on (the thesis), as prompt + the full model's greedy answer.
:func:`plot_adapter_mse` draws the report.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dynprune.adapters import DEFAULT_BOTTLENECK, BottleneckAdapter, adapter_layers
from dynprune.importance import separator_id
from dynprune.types import Prompt
from dynprune.validation import require_at_least, require_finite, require_in_range, require_integer, require_positive

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

log = logging.getLogger(__name__)

__all__ = ["AdapterConfig", "AdapterReport", "init_adapters", "plot_adapter_mse", "record_layer_io", "train_adapters"]


# ----------------------------------------------------------------------------- config and report


@dataclass(frozen=True)
class AdapterConfig:
    """Settings of adapter distillation.

    Args:
        bottleneck: Width of each adapter's bottleneck.
        lr: AdamW learning rate.
        epochs: Passes over the training windows (each pass trains every layer once per batch).
        batch_size: Windows per recorded forward pass of the full model.
        batch_tokens: Tokens per optimisation step (a recorded batch gives
            ``batch_size * seq_len / batch_tokens`` steps per adapter).
        n_prompts: Calibration windows in all (training + held-out), as in importance calibration.
        seq_len: Tokens per window.
        layers: Layers to train adapters for; ``None`` = all.
        weight_decay: AdamW weight decay.
        heldout_fraction: Fraction of the windows (and of the texts they are cut from) held out
            to measure reconstruction MSE.
        seed: Seed of the initialisation, the split and the shuffling (the global RNG is untouched).
        only_correct: Train only on prompts whose full-model greedy answer earns task score 1
            (needs ``prompts`` with a gold answer or expected calls).
        max_new_tokens: Length of the full model's greedy answers to prompts.
    """

    bottleneck: int = DEFAULT_BOTTLENECK
    lr: float = 1e-3
    epochs: int = 4
    batch_size: int = 8
    batch_tokens: int = 256
    n_prompts: int = 64
    seq_len: int = 128
    layers: tuple[int, ...] | None = None
    weight_decay: float = 0.0
    heldout_fraction: float = 0.125
    seed: int = 0
    only_correct: bool = False
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        require_integer(self, 1, "bottleneck", "epochs", "batch_size", "batch_tokens", "max_new_tokens")
        require_integer(self, 2, "n_prompts", "seq_len")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        require_positive(self, "lr")
        require_at_least(self, 0, "weight_decay")
        require_finite(self, "weight_decay")
        require_in_range(self, 0, 1, "heldout_fraction", interval="()")
        if not isinstance(self.only_correct, bool):
            raise ValueError(f"only_correct must be a bool, got {self.only_correct!r}")
        if self.layers is not None:
            layers = list(self.layers)
            for v in layers:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"layers: expected non-negative integer layer indices, got {v!r}")
            if not layers or len(set(layers)) != len(layers):
                raise ValueError(f"layers must be non-empty and without repeats (or None for all), got {layers}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        n_val = self.n_heldout
        if n_val >= self.n_prompts:
            raise ValueError(
                f"heldout_fraction {self.heldout_fraction} of n_prompts {self.n_prompts} leaves no training window"
            )

    @property
    def n_heldout(self) -> int:
        """Held-out windows: ``max(1, round(heldout_fraction * n_prompts))``."""
        return max(1, round(self.heldout_fraction * self.n_prompts))


@dataclass(frozen=True)
class AdapterReport:
    """What :func:`train_adapters` did and how well each adapter reconstructs its layer.

    Attributes:
        model_id: The model the adapters were trained on.
        bottleneck: Bottleneck width.
        layers: Layers with an adapter, sorted; the per-layer tuples follow this order.
        mse_identity: Held-out MSE of the layer's output against its input (what skipping does).
        mse_trained: Held-out MSE of the trained adapter's output against the layer's output.
        n_windows: Training windows (of ``seq_len`` tokens).
        n_heldout: Held-out windows the MSEs are measured on.
        seq_len: Tokens per window.
        epochs: Passes over the training windows.
        steps: Optimisation steps taken by each adapter.
        n_sources: Texts (or prompts + answers) the windows were cut from.
        source: ``"texts"``, ``"prompts"`` or ``"correct prompts"``.
        epoch_loss: Per epoch, per layer mean training MSE.
        seconds: Wall-clock time of the training (recording included).
        adapters: The trained adapters ``{layer: module}`` (not serialised; in the model's dtype).
    """

    model_id: str
    bottleneck: int
    layers: tuple[int, ...]
    mse_identity: tuple[float, ...]
    mse_trained: tuple[float, ...]
    n_windows: int
    n_heldout: int
    seq_len: int
    epochs: int
    steps: int
    n_sources: int
    source: str
    epoch_loss: tuple[tuple[float, ...], ...] = ()
    seconds: float = 0.0
    adapters: dict[int, BottleneckAdapter] = field(default_factory=dict, compare=False, repr=False)

    @property
    def mse_ratio(self) -> tuple[float, ...]:
        """Per layer ``mse_trained / mse_identity`` (below 1: the adapter beats skipping)."""
        return tuple(t / i if i > 0 else math.nan for t, i in zip(self.mse_trained, self.mse_identity, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (without the adapter modules)."""
        # not dataclasses.asdict: it would deep-copy the adapter modules
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "adapters"}
        d["layers"] = list(self.layers)
        d["mse_identity"] = list(self.mse_identity)
        d["mse_trained"] = list(self.mse_trained)
        d["epoch_loss"] = [list(e) for e in self.epoch_loss]
        d["mse_ratio"] = list(self.mse_ratio)
        return d

    def to_json(self) -> str:
        """The report as an indented JSON object."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> AdapterReport:
        """Inverse of :meth:`to_json` (the adapters themselves are not in it)."""
        d = json.loads(text)
        d.pop("mse_ratio", None)
        d["layers"] = tuple(d["layers"])
        d["mse_identity"] = tuple(d["mse_identity"])
        d["mse_trained"] = tuple(d["mse_trained"])
        d["epoch_loss"] = tuple(tuple(e) for e in d.get("epoch_loss", ()))
        return cls(**d)


# ----------------------------------------------------------------------------- data


def _pack(seqs: Sequence[Sequence[int]], n: int, seq_len: int) -> torch.Tensor:
    """``[n, seq_len]`` windows cut from the token sequences joined end to end (cycled if short)."""
    stream = [t for s in seqs for t in s]
    need = n * seq_len
    reps = -(-need // len(stream))
    return torch.tensor((stream * reps)[:need], dtype=torch.long).view(n, seq_len)


def _split_windows(seqs: list[list[int]], config: AdapterConfig, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split whole sequences into training / held-out groups, then pack each into windows."""
    seqs = [s for s in seqs if s]
    if len(seqs) < 2:
        raise ValueError(
            f"adapter training needs at least 2 non-empty {what} (some are held out to measure MSE), got {len(seqs)}"
        )
    g = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(seqs), generator=g).tolist()
    n_hold = min(len(seqs) - 1, max(1, round(config.heldout_fraction * len(seqs))))
    held = [seqs[i] for i in order[:n_hold]]
    train = [seqs[i] for i in order[n_hold:]]
    n_val = config.n_heldout
    return _pack(train, config.n_prompts - n_val, config.seq_len), _pack(held, n_val, config.seq_len)


def _text_sequences(lm: PrunableLM, texts: Sequence[str]) -> list[list[int]]:
    """Each non-empty text's tokens followed by the separator (as :func:`~dynprune.importance.token_stream`)."""
    sep = separator_id(lm)
    out = []
    for text in texts:
        ids = lm.encode_text(text)
        if ids:
            out.append([*ids, sep])
    return out


def _prompt_sequences(lm: PrunableLM, prompts: Sequence[Prompt], config: AdapterConfig) -> tuple[list[list[int]], str]:
    """Prompt + the full model's greedy answer per prompt; with ``only_correct``, correct answers only."""
    from dynprune.runtime import prompt_task_score

    seqs: list[list[int]] = []
    judged = 0
    sep = separator_id(lm)
    for p in prompts:
        if config.only_correct and p.answer is None and not p.ground_truth:
            continue  # no ground truth: cannot tell whether the full model is right
        ids = lm.encode_prompt(p.text, max_new_tokens=config.max_new_tokens)
        answer = lm.generate(ids, max_new_tokens=config.max_new_tokens)
        if config.only_correct:
            judged += 1
            if prompt_task_score(p, answer.text) != 1.0:
                continue
        seqs.append([*ids, *answer.output_ids, sep])
    if config.only_correct:
        log.info("only_correct: %d of %d prompts with ground truth answered correctly", len(seqs), judged)
        if not seqs:
            raise ValueError(
                f"only_correct: the full model answered none of the {judged} prompts with ground truth "
                f"correctly ({len(prompts) - judged} of {len(prompts)} prompts have no answer or expected calls); "
                "nothing to train on"
            )
        return seqs, "correct prompts"
    return seqs, "prompts"


# ----------------------------------------------------------------------------- recording


class _StopForward(Exception):
    """Raised by the last needed layer's hook: the rest of the forward pass is not needed."""


def record_layer_io(
    lm: PrunableLM,
    windows: torch.Tensor,
    layers: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each decoder layer's input and output hidden states over one batch of token windows.

    Hooks on the original decoder layers (``lm._layers``) catch the layer's input
    (``args[0]`` or ``kwargs["hidden_states"]``) and output; the forward pass stops
    after the last requested layer.

    Args:
        lm: The model; must have no plan applied (records are of the full model).
        windows: ``[batch, seq_len]`` token ids.
        layers: Layers to record; ``None`` = all.
        device: Where the records go (default: the model's device).

    Returns:
        ``{layer: (input, output)}``, each ``[batch, seq_len, hidden]`` float32 copies.
    """
    if lm.active_plan is not None:
        raise RuntimeError("record the full model: call outside lm.apply(...)")
    n = lm.geometry.num_layers
    wanted = list(range(n)) if layers is None else sorted(set(layers))
    if not wanted:
        raise ValueError("no layers to record")
    for i in wanted:
        if not 0 <= i < n:
            raise ValueError(f"layer {i} out of range 0..{n - 1}")
    if windows.dim() != 2:
        raise ValueError(f"windows must be [batch, seq_len] token ids, got shape {tuple(windows.shape)}")
    dev = lm.device if device is None else torch.device(device)
    last = wanted[-1]
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i: int):  # noqa: ANN202 - hook factory
        def fn(module, args, kwargs, output):  # noqa: ANN001, ANN202
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            out[i] = (x.detach().to(dev, torch.float32, copy=True), y.detach().to(dev, torch.float32, copy=True))
            if i == last:
                raise _StopForward

        return fn

    handles = [lm._layers[i].register_forward_hook(hook(i), with_kwargs=True) for i in wanted]
    try:
        # no_grad, not inference_mode: the records feed autograd later (inference tensors cannot).
        with torch.no_grad():
            lm.model(input_ids=windows.to(lm.device), use_cache=False, logits_to_keep=1)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in wanted if i not in out]
    if missing:
        raise RuntimeError(f"layers {missing} did not run in the forward pass; is a plan applied?")
    return out


# ----------------------------------------------------------------------------- training


def init_adapters(lm: PrunableLM, config: AdapterConfig | None = None) -> dict[int, BottleneckAdapter]:
    """Fresh (identity) float32 adapters on the model's device for ``config.layers``, seeded by ``config.seed``."""
    config = config or AdapterConfig()
    layers = adapter_layers(lm, config.layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return {
            i: BottleneckAdapter(lm.geometry.hidden_size, config.bottleneck, dtype=torch.float32, device=lm.device)
            for i in layers
        }


def train_adapters(
    lm: PrunableLM,
    texts: Sequence[str] | None = None,
    config: AdapterConfig | None = None,
    prompts: Sequence[Prompt] | None = None,
    adapters: Mapping[int, BottleneckAdapter] | None = None,
) -> AdapterReport:
    """Distil every decoder layer into a bottleneck adapter; all layers in one pass over the data.

    The data are either ``texts`` (default: the shipped prompt set's training split, as
    for importance calibration) or ``prompts``: each prompt followed by the full model's
    greedy answer. With ``config.only_correct`` (needs ``prompts``) only prompts whose
    answer earns task score 1 are used; prompts without a gold answer or expected calls
    are left out. Sources are split into training and held-out groups before they are
    cut into ``config.n_prompts`` windows of ``config.seq_len`` tokens.

    Each epoch visits the training windows in a seeded random order, ``batch_size`` at a
    time: one full-model forward pass records every layer's input ``x`` and output ``y``,
    then every adapter takes AdamW steps on ``MSE(adapter(x), y)`` over shuffled chunks of
    ``batch_tokens`` tokens. The per-layer losses are summed into one backward pass; as
    they share no parameter and Adam is per-parameter, this equals independent training.

    Args:
        lm: The model (no plan applied). It is not changed.
        texts: Calibration texts (not together with ``prompts``).
        config: Settings; default :class:`AdapterConfig`.
        prompts: Prompts to train on (with their full-model answers).
        adapters: Adapters to continue training (trained in place); default fresh ones
            from :func:`init_adapters`. Their layers override ``config.layers``.

    Returns:
        An :class:`AdapterReport` with per-layer held-out MSE of skipping (identity) and of
        the trained adapter; its ``adapters`` are in the model's dtype, in eval mode, frozen.
        They are not attached: call :func:`attach_adapters`.

    Raises:
        ValueError: both or neither of texts / prompts with ``only_correct``, fewer than two
            usable texts or prompts, no prompt answered correctly under ``only_correct``,
            layers out of range, adapters of the wrong width.
        RuntimeError: a plan is applied to ``lm``.
    """
    config = config or AdapterConfig()
    if lm.active_plan is not None:
        raise RuntimeError("train adapters on the full model: call outside lm.apply(...)")
    if texts is not None and prompts is not None:
        raise ValueError("pass texts or prompts, not both")
    if config.only_correct and prompts is None:
        raise ValueError("only_correct needs prompts with a gold answer (or expected calls) to judge the full model")
    if config.seq_len > lm.geometry.max_position:
        raise ValueError(f"seq_len {config.seq_len} exceeds the model's context {lm.geometry.max_position}")
    t0 = time.perf_counter()

    # 1. data: whole texts / prompt+answer sequences split into training and held-out windows
    if prompts is not None:
        seqs, source = _prompt_sequences(lm, prompts, config)
        train_w, val_w = _split_windows(seqs, config, "prompts")
    else:
        if texts is None:
            from dynprune.importance import default_texts

            texts = default_texts()
        seqs, source = _text_sequences(lm, texts), "texts"
        train_w, val_w = _split_windows(seqs, config, "texts")

    # 2. adapters, trained in float32 whatever the model's dtype
    if adapters is None:
        mods = init_adapters(lm, config)
    else:
        mods = dict(adapters)
        if not mods:
            raise ValueError("adapters is empty; pass None for fresh adapters")
        adapter_layers(lm, list(mods))
    layers = sorted(mods)
    hidden = lm.geometry.hidden_size
    for i, m in mods.items():
        if not isinstance(m, BottleneckAdapter) or m.hidden != hidden:
            raise ValueError(f"adapter for layer {i} must be a BottleneckAdapter of hidden size {hidden}, got {m!r}")
        m.to(device=lm.device, dtype=torch.float32).train().requires_grad_(True)
    params = [p for m in mods.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed + 1)

    # 3. one pass over the data per epoch: record a batch for all layers, step every adapter on it
    steps = 0
    epoch_loss: list[tuple[float, ...]] = []
    n_train = train_w.shape[0]
    for epoch in range(config.epochs):
        sums = torch.zeros(len(layers), dtype=torch.float64)
        count = 0
        order = torch.randperm(n_train, generator=g)
        for start in range(0, n_train, config.batch_size):
            io = record_layer_io(lm, train_w[order[start : start + config.batch_size]], layers)
            flat = {i: (x.reshape(-1, hidden), y.reshape(-1, hidden)) for i, (x, y) in io.items()}
            n_tok = next(iter(flat.values()))[0].shape[0]
            perm = torch.randperm(n_tok, generator=g).to(lm.device)
            for s in range(0, n_tok, config.batch_tokens):
                idx = perm[s : s + config.batch_tokens]
                opt.zero_grad(set_to_none=True)
                losses = torch.stack([F.mse_loss(mods[i](flat[i][0][idx]), flat[i][1][idx]) for i in layers])
                losses.sum().backward()
                opt.step()
                steps += 1
                sums += losses.detach().double().cpu() * len(idx)
                count += len(idx)
        epoch_loss.append(tuple((sums / count).tolist()))
        log.info("adapters epoch %d/%d: mean training MSE %.4g", epoch + 1, config.epochs, float(sums.mean() / count))

    # 4. freeze in the model's dtype; measure held-out MSE of skipping and of the adapter
    for m in mods.values():
        m.to(dtype=lm.dtype).eval().requires_grad_(False)
    ident, trained = _heldout_mse(lm, val_w, mods, config.batch_size)
    return AdapterReport(
        model_id=lm.model_id,
        bottleneck=next(iter(mods.values())).bottleneck,
        layers=tuple(layers),
        mse_identity=ident,
        mse_trained=trained,
        n_windows=n_train,
        n_heldout=val_w.shape[0],
        seq_len=config.seq_len,
        epochs=config.epochs,
        steps=steps,
        n_sources=len(seqs),
        source=source,
        epoch_loss=tuple(epoch_loss),
        seconds=time.perf_counter() - t0,
        adapters=mods,
    )


@torch.no_grad()
def _heldout_mse(
    lm: PrunableLM, windows: torch.Tensor, mods: Mapping[int, nn.Module], batch_size: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per layer mean squared error of ``x`` (skipping) and of ``adapter(x)`` against the layer output ``y``."""
    layers = sorted(mods)
    ident = torch.zeros(len(layers), dtype=torch.float64)
    trained = torch.zeros(len(layers), dtype=torch.float64)
    n = 0
    for start in range(0, windows.shape[0], batch_size):
        io = record_layer_io(lm, windows[start : start + batch_size], layers)
        for j, i in enumerate(layers):
            x, y = io[i]
            ident[j] += (x - y).double().pow(2).sum().cpu()
            pred = mods[i](x.to(lm.dtype)).float()  # the adapter as it will run: in the model's dtype
            trained[j] += (pred - y).double().pow(2).sum().cpu()
        n += io[layers[0]][0].numel()
    return tuple((ident / n).tolist()), tuple((trained / n).tolist())


# ----------------------------------------------------------------------------- plot


def plot_adapter_mse(report: AdapterReport, path: str | Path) -> Path:
    """Bar chart per layer of held-out MSE: skipping (identity) vs trained adapter, log scale."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(report.layers)
    fig = Figure(figsize=(max(6.0, 0.35 * n + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(n))
    w = 0.4
    floor = 1e-12  # log scale: a zero MSE is drawn at the floor
    ax.bar([x - w / 2 for x in xs], [max(v, floor) for v in report.mse_identity], w, label="identity (skip)")
    ax.bar([x + w / 2 for x in xs], [max(v, floor) for v in report.mse_trained], w, label="trained adapter")
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(i) for i in report.layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out MSE to the layer output")
    ax.set_title(f"adapters (bottleneck {report.bottleneck}) on {report.model_id}")
    ax.legend()
    fig.savefig(path, dpi=120)
    return path
