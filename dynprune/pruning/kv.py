"""KV-cache windows: keep the first S tokens (attention sinks) and the most recent W of each layer's cache.

StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks")
keeps a few initial tokens, which soak up attention mass whatever their content, beside a
window of recent ones; the KV cache then stops growing with the context. Here every query at
absolute position ``p`` attends to the keys at positions ``j <= p`` with ``j < S`` (sinks) or
``j > p - W(p)`` (the ``W(p)`` most recent tokens, itself included). ``W`` is absolute (a fixed
window: memory bounded) or a fraction of the context (``W(p) = ceil(fraction * (p + 1))``: the
cache holds that share of the tokens at every step). Positions keep their original rotary
encoding: the keys are cached already rotated, so this is exactly the full model's attention
with the out-of-window positions masked out, which is what the tests check it against.

Two parts, both reversible and put in place by ``PrunableLM.apply`` only:

- :class:`SinkWindowLayer`, a transformers ``DynamicLayer`` that evicts out-of-window tokens
  after each update and reports the tokens *seen* as its sequence length (so rotary positions
  and the model's causal mask stay right), with a mask offset that lines its kept keys up with
  their positions;
- :func:`apply_kv_window`, forward pre-hooks on the attention modules that turn the cache's
  plain ``DynamicLayer`` slots (``DynamicCache(config=...)`` makes them, as ``generation.py`` and
  ``paired_timing.py`` do) into window layers on first use, and replace the attention mask when
  a multi-token pass (prefill, teacher-forced scoring) has pairs the window cuts.

A decode step (one query) needs no mask of its own: the cache holds exactly the keys it may see.
Like the rest of dynprune's decoding this is batch 1 without padding: the window's mask replaces
the model's causal mask in a pass it cuts (a padding mask would be dropped there).

A long prompt is fed in chunks (:func:`prefill_chunk`, used by ``generation.forward_with_cache``):
a masked pass materialises its query x key scores, so one pass over an n-token prompt would hold
n^2 scores per head, more than the full model's causal kernel and its whole cache. In chunks of C
tokens a pass holds at most C x (S + W + C) scores and the cache S + W + C tokens, whatever the
prompt's length: what bounded attention memory means on a memory-tight device. The logits are
the same (every query sees exactly its window either way; the tests check both against the reference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

#: Attention implementations whose masks the window can rewrite (a boolean or an additive float mask).
KV_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
#: Prompt tokens per prefill pass under a fractional window (its cache grows with the context anyway).
PREFILL_CHUNK = 256
#: Fewest prompt tokens per prefill pass under a fixed window (fewer passes cost more than they save).
MIN_PREFILL_CHUNK = 64


@dataclass(frozen=True)
class KVWindow:
    """Which cached tokens a layer keeps: ``sinks`` first tokens and the most recent ``W``.

    Args:
        sinks: Initial tokens always kept (StreamingLLM's attention sinks; 4 in the paper).
        window: ``W`` as a token count (the cache is bounded by ``sinks + window``), or None.
        fraction: ``W`` as a share of the context, in (0, 1): ``W(p) = ceil(fraction * (p + 1))``
            at position ``p``, or None. Exactly one of ``window`` and ``fraction`` is given.
    """

    sinks: int = 4
    window: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"kv: sinks must be an integer >= 0, got {self.sinks!r}")
        if (self.window is None) == (self.fraction is None):
            raise ValueError(
                f"kv: give exactly one of window (tokens) and fraction (share of the context), "
                f"got window={self.window!r}, fraction={self.fraction!r}"
            )
        if self.window is not None and (
            isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1
        ):
            raise ValueError(f"kv: window must be an integer >= 1 (tokens), got {self.window!r}")
        if self.fraction is not None:
            if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)):
                raise ValueError(f"kv: fraction must be a number in (0, 1), got {self.fraction!r}")
            if not 0.0 < float(self.fraction) < 1.0:
                raise ValueError(
                    f"kv: fraction must be in (0, 1) (1 keeps the whole cache: drop kv instead), got {self.fraction!r}"
                )
            object.__setattr__(self, "fraction", float(self.fraction))

    def recent(self, positions: torch.Tensor) -> torch.Tensor:
        """``W(p)`` for each position ``p`` (a long tensor of the same shape)."""
        if self.window is not None:
            return torch.full_like(positions, self.window)
        # float64, so the mask and the eviction compute the same integer for every position
        w = torch.ceil(positions.to(torch.float64).add(1.0).mul(self.fraction)).to(torch.long)
        return w.clamp_min(1)

    def recent_at(self, position: int) -> int:
        """``W(p)`` at one position."""
        return int(self.recent(torch.tensor([position], dtype=torch.long))[0])

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per prefill pass: the window (at least 64) when fixed, else 256."""
        return max(MIN_PREFILL_CHUNK, self.window) if self.window is not None else PREFILL_CHUNK

    def held_tokens(self, n_tokens: int) -> int:
        """Tokens a layer's cache holds while the last of ``n_tokens`` attends (its peak)."""
        if n_tokens < 1:
            return 0
        return min(n_tokens, self.sinks + self.recent_at(n_tokens - 1))

    def describe(self) -> str:
        """``s4+w256`` or ``s4+50%``."""
        w = f"w{self.window}" if self.window is not None else f"{100 * (self.fraction or 0):g}%"
        return f"s{self.sinks}+{w}"

    def to_dict(self) -> dict[str, Any]:
        """``{"sinks": S, "window": W}`` or ``{"sinks": S, "fraction": f}``."""
        if self.window is not None:
            return {"sinks": self.sinks, "window": self.window}
        return {"sinks": self.sinks, "fraction": self.fraction}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KVWindow:
        """Inverse of :meth:`to_dict`; a ``ValueError`` names an unknown key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"plan field 'kv' must be an object {{sinks, window | fraction}}, got {data!r:.80}")
        unknown = set(data) - {"sinks", "window", "fraction"}
        if unknown:
            raise ValueError(f"plan field 'kv': unknown keys {sorted(unknown)}; expected sinks, window, fraction")
        return cls(sinks=data.get("sinks", 4), window=data.get("window"), fraction=data.get("fraction"))


class SinkWindowLayer(DynamicLayer):
    """A ``DynamicLayer`` that keeps the sinks and the window's recent tokens, evicting the rest.

    Stored keys are the positions ``0 .. n_sinks - 1`` followed by the contiguous block
    ``seen - n_recent .. seen - 1``. After an update it keeps what the *next* query (position
    ``seen``) may see, ``j < S`` or ``j > seen - W(seen)``: by the window's monotonicity
    (``p - W(p)`` never decreases) every later query needs no evicted token. ``update`` returns
    the states before eviction, so the queries of the current pass see their whole window.
    """

    is_sliding = False

    def __init__(self, window: KVWindow) -> None:
        super().__init__()
        self.kv_window = window
        self.seen = 0
        self.n_sinks = 0
        self.n_recent = 0

    @classmethod
    def from_layer(cls, layer: DynamicLayer, window: KVWindow) -> SinkWindowLayer:
        """A window layer holding ``layer``'s tokens (positions 0..n-1), evicted to the window."""
        new = cls(window)
        n = layer.get_seq_length()
        if n:
            new.lazy_initialization(layer.keys, layer.values)
            new.seen = n
            new.n_sinks = min(window.sinks, n)
            new.n_recent = n - new.n_sinks
            new.keys, new.values = new._evict(layer.keys), new._evict(layer.values)
            new._settle()
        return new

    def positions(self) -> torch.Tensor:
        """Absolute positions of the stored keys, in storage order."""
        dev = self.keys.device if self.is_initialized else None
        return torch.cat([
            torch.arange(self.n_sinks, device=dev),
            torch.arange(self.seen - self.n_recent, self.seen, device=dev),
        ])

    def _kept_recent(self) -> int:
        """Non-sink tokens the next query may see: positions ``max(S, seen + 1 - W(seen)) .. seen - 1``."""
        start = max(self.n_sinks, self.seen + 1 - self.kv_window.recent_at(self.seen))
        return max(0, min(self.n_recent, self.seen - start))

    def _evict(self, states: torch.Tensor) -> torch.Tensor:
        keep = self._kept_recent()
        if keep == self.n_recent:
            return states
        # torch.cat copies: a slice would keep the evicted tokens' storage alive
        return torch.cat([states[:, :, : self.n_sinks], states[:, :, states.shape[-2] - keep :]], dim=-2)

    def _settle(self) -> None:
        self.n_recent = self._kept_recent()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens, return every stored + new state, keep the window's."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        full_k = torch.cat([self.keys, key_states], dim=-2)
        full_v = torch.cat([self.values, value_states], dim=-2)
        n = key_states.shape[-2]
        self.seen += n
        # the new tokens join the sinks until S are held, then the recent block
        to_sinks = min(n, max(0, self.kv_window.sinks - self.n_sinks)) if self.n_recent == 0 else 0
        self.n_sinks += to_sinks
        self.n_recent += n - to_sinks
        self.keys, self.values = self._evict(full_k), self._evict(full_v)
        self._settle()
        return full_k, full_v

    def get_seq_length(self) -> int:
        """Tokens seen (not stored): the next token's position, as the model's rotary encoding needs."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Stored + new keys, offset so the new keys line up with their positions (causal mask right)."""
        stored = self.n_sinks + self.n_recent
        return stored + query_length, self.seen - stored

    def get_max_length(self) -> int:
        """The bound of a fixed window (``sinks + window``), -1 for a fractional one."""
        w = self.kv_window
        return w.sinks + w.window if w.window is not None else -1

    def crop(self, tokens_to_remove: int) -> None:
        """Not supported: evicted tokens cannot come back."""
        raise RuntimeError(
            "a KV-window cache layer cannot be cropped (evicted tokens are gone); "
            "snapshot the layers instead (copy.copy of each layer, as generation.decode_and_score does)"
        )

    def reset(self) -> None:
        """Empty the layer."""
        super().reset()
        self.seen = self.n_sinks = self.n_recent = 0


def window_allowed(window: KVWindow, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """``[q, k]`` booleans: key position ``k_pos[j]`` is visible to query ``q_pos[i]`` (causal, sinks, window)."""
    q, k = q_pos[:, None], k_pos[None, :]
    return (k <= q) & ((k < window.sinks) | (k > q - window.recent(q_pos)[:, None]))


def _implementation(attn: nn.Module) -> str | None:
    """The attention implementation that gets the mask (under a ragged head slice: the one it wraps)."""
    base = getattr(attn, "_dynprune_base_attention", None)  # dynprune.pruning.heads, ragged GQA
    return base if base is not None else getattr(attn.config, "_attn_implementation", None)


def _mask(allowed: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The ``[1, 1, q, k]`` attention mask of ``allowed`` in the implementation's format."""
    if implementation == "sdpa":
        return allowed[None, None]
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[None, None]


HookResult = tuple[tuple[Any, ...], dict[str, Any]]


def _window_hook(window: KVWindow) -> Callable[..., HookResult]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> HookResult:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        n_query = hidden.shape[-2]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        layer: SinkWindowLayer | None = None
        if cache is not None:
            idx = module.layer_idx
            slot = cache.layers[idx]
            if isinstance(slot, SinkWindowLayer):
                layer = slot
            elif type(slot) is DynamicLayer:
                layer = cache.layers[idx] = SinkWindowLayer.from_layer(slot, window)
            else:
                raise RuntimeError(
                    f"a KV-window plan needs a DynamicCache of plain layers; layer {idx} of the cache is "
                    f"{type(slot).__name__} (make the cache with DynamicCache(config=model.config))"
                )
        if n_query == 1:  # a decode step: the cache holds exactly the keys it may see
            return args, kwargs
        seen = layer.seen if layer is not None else 0
        pos = kwargs.get("position_ids")
        q_pos = pos[0] if pos is not None else torch.arange(seen, seen + n_query, device=hidden.device)
        last = int(q_pos[-1])
        if last - window.recent_at(last) + 1 <= window.sinks:
            return args, kwargs  # nothing out of the window yet: the model's causal mask is exact
        k_pos = q_pos if layer is None else torch.cat([layer.positions().to(q_pos.device), q_pos])
        allowed = window_allowed(window, q_pos, k_pos)
        kwargs["attention_mask"] = _mask(allowed, _implementation(module), hidden.dtype)
        return args, kwargs

    return hook


def check_attention(config: Any, impl: str | None = None) -> None:
    """Raise ``ValueError`` unless the model's attention implementation takes the window's masks."""
    impl = impl if impl is not None else getattr(config, "_attn_implementation", None)
    if impl not in KV_ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"a KV-window plan needs attn_implementation in {KV_ATTENTION_IMPLEMENTATIONS}, the model uses {impl!r}; "
            "load it with attn_implementation='sdpa'"
        )


def apply_kv_window(
    attention: Iterable[nn.Module], window: KVWindow, owner: nn.Module | None = None
) -> Callable[[], None]:
    """Put ``window`` on every attention module given (a forward pre-hook each); return the undo.

    Modules with their own sliding window (``self_attn.sliding_window`` set: Mistral, Qwen2/3
    sliding layers) keep it: their cache is already bounded and their mask is the model's.
    ``owner`` (the causal-LM module) is marked with the window, so cached passes over a long
    input run in chunks (:func:`prefill_chunk`).
    """
    handles: list[Any] = []
    for attn in attention:
        check_attention(attn.config, _implementation(attn))
        if getattr(attn, "sliding_window", None):
            continue
        handles.append(attn.register_forward_pre_hook(_window_hook(window), with_kwargs=True))

    if not handles:
        raise ValueError(
            "a KV-window plan needs a running full-attention layer; every running layer keeps its own sliding "
            "window (config.sliding_window), which already bounds its cache: drop kv from the plan"
        )
    if owner is not None:
        owner._dynprune_kv_window = window

    def undo() -> None:
        for h in handles:
            h.remove()
        if owner is not None:
            del owner._dynprune_kv_window

    return undo


def prefill_chunk(model: nn.Module) -> int | None:
    """Input tokens per cached pass of ``model`` under a KV window, or None when none is applied."""
    window = getattr(model, "_dynprune_kv_window", None)
    return window.prefill_chunk if window is not None else None


def kv_cache_bytes(cache: Any) -> int:
    """Bytes of the key and value tensors a cache holds now (every layer)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def kv_bytes(kv_width: int, n_tokens: int, element_size: int, window: KVWindow | None = None) -> int:
    """KV-cache bytes at the peak of a generation of ``n_tokens`` positions (prompt + answer).

    ``kv_width`` is the sum over running layers of kept KV heads x head dim
    (``PlanShapes.kv_width``); keys and values each take ``kv_width * element_size`` bytes a token.
    """
    held = n_tokens if window is None else window.held_tokens(n_tokens)
    return 2 * kv_width * held * element_size


def fraction_held(window: KVWindow | None, n_tokens: int) -> float:
    """Share of the ``n_tokens`` positions the window's cache holds at its peak (1.0 without a window)."""
    if window is None or n_tokens < 1:
        return 1.0
    return window.held_tokens(n_tokens) / n_tokens


__all__ = [
    "KVWindow",
    "SinkWindowLayer",
    "apply_kv_window",
    "check_attention",
    "fraction_held",
    "kv_bytes",
    "kv_cache_bytes",
    "prefill_chunk",
    "window_allowed",
]
