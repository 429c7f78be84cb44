"""Train plan-conditional healing (``dynprune heal``): distillation to the original under the env's plans.

The data (built once per model, prompts and data settings, cached under ``<dynprune cache>/healing-data``):

- the training split of a prompt source (the shipped set by default), split again into training
  and validation prompts (seeded), so the benchmark's test split stays unseen;
- per prompt, the *original* model's greedy answer (what every fidelity metric compares against)
  and ``sampled`` answers drawn at ``sample_temperature`` (paths a pruned model may wander onto);
- per answer position, the original's ``top_k`` log-probabilities and the log of the rest of its
  probability mass (read off the logits the answer was generated from): enough for the KL of the
  original's next-token distribution to the student's over ``top_k + 1`` outcomes, without running
  the original again at each step (sparse KD).

Each step draws a plan from the ones the env serves: every entry of the action table but ``none``,
built from the importance the env uses (``dynprune.actions.entry_plan``), plus optional extra
layer counts (``extra_layer_ks``: the first k layers of the same order), weighted by kind; puts it
in place with its group's LoRA (``PrunableLM.apply`` under an unmerged :class:`PlanHealing`) and
takes one AdamW step on

    KL(p_original || p_plan) over the answer positions (Hinton et al. 2015 at T = 1),

computed on the plan's own pruned forward pass. Only the LoRA weights train; the model is frozen.
Every ``eval_every`` steps the same KL and the teacher-forced agreement with the greedy answer are
measured on the validation prompts under every training plan; each group keeps its best weights
(lowest mean validation KL over its plans). A checkpoint (weights, optimiser, step, random state,
best weights) is written atomically at each evaluation, so a stopped run resumes where it was.
The output folder is written whole at the end (:func:`dynprune.healing.save_healing`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dynprune.actions import KINDS as ACTION_KINDS
from dynprune.actions import entry_plan, make_table
from dynprune.fileio import atomic_path, check_writable
from dynprune.generation import forward_with_cache
from dynprune.healing import (
    KINDS,
    HealingConfig,
    HealingInfo,
    PlanHealing,
    is_healing_folder,
    load_healing,
    plan_kind,
    save_healing,
)
from dynprune.plan import PruningPlan
from dynprune.progress import Progress
from dynprune.selection import layers_plan
from dynprune.types import Prompt
from dynprune.validation import require_known_keys

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

DATA_VERSION = 1


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class HealTrainConfig:
    """Settings of a healing run.

    Args:
        prompts: Prompt source (``dynprune.tasks.load_prompts``); its ``train`` split is used.
        max_new_tokens: Length limit of the original's answers.
        sampled: Sampled answers per training prompt beside the greedy one.
        sample_temperature: Temperature of those samples.
        top_k: Original's log-probabilities kept per answer position.
        val_fraction: Share of the training prompts held out for validation.
        steps: Optimisation steps.
        batch_size: Sequences (prompt + answer) per step.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay to a tenth).
        warmup: Warm-up steps.
        weight_decay: AdamW weight decay.
        eval_every: Steps between validations (and checkpoints).
        time_budget_s: Stop training after this many seconds of training (all sessions of a resumed run
            together); None: run every step.
        kind_weights: Relative frequency of a layers / heads / ffn plan in the steps.
        extra_layer_ks: Layer counts trained beside the table's (the first k layers of its order).
        table: Action table (``"default"`` or entries as dicts).
        seed: Seed of the split, the samples, the LoRA initialisation and the step order.
        save_dtype: Precision of the stored LoRA weights (``"float16"`` halves the folder).
        init: A healing folder to start from (its weights, trained for the same model with the same
            healing settings): more steps on a finished healing. None: fresh LoRA (``B`` zero).
    """

    prompts: str = "dynprune"
    max_new_tokens: int = 32
    sampled: int = 1
    sample_temperature: float = 0.8
    top_k: int = 64
    val_fraction: float = 0.125
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    eval_every: int = 25
    time_budget_s: float | None = None
    kind_weights: tuple[float, float, float] = (2.0, 1.0, 1.0)
    extra_layer_ks: tuple[int, ...] = ()
    table: str | tuple[dict[str, Any], ...] = "default"
    seed: int = 0
    save_dtype: str = "float32"
    init: str | None = None

    def __post_init__(self) -> None:
        from dynprune.healing import SAVE_DTYPES

        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype must be one of {sorted(SAVE_DTYPES)}, got {self.save_dtype!r}")
        for name in ("max_new_tokens", "top_k", "steps", "batch_size", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("sampled", "warmup", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if not (math.isfinite(self.sample_temperature) and self.sample_temperature > 0):
            raise ValueError(f"sample_temperature must be > 0, got {self.sample_temperature!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 or None, got {self.time_budget_s!r}")
        weights = tuple(float(w) for w in self.kind_weights)
        if len(weights) != 3 or any(not math.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"kind_weights must be three numbers >= 0 (layers, heads, ffn), not all 0, got {weights}")
        object.__setattr__(self, "kind_weights", weights)
        ks = tuple(int(k) for k in self.extra_layer_ks)
        if any(k < 1 for k in ks) or len(set(ks)) != len(ks):
            raise ValueError(f"extra_layer_ks must be distinct integers >= 1, got {self.extra_layer_ks!r}")
        object.__setattr__(self, "extra_layer_ks", tuple(sorted(ks)))
        if not isinstance(self.table, str):
            object.__setattr__(self, "table", tuple(dict(e) for e in self.table))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = dataclasses.asdict(self)
        d["kind_weights"], d["extra_layer_ks"] = list(self.kind_weights), list(self.extra_layer_ks)
        d["table"] = self.table if isinstance(self.table, str) else [dict(e) for e in self.table]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealTrainConfig:
        """Inverse of :meth:`to_dict`; an unknown key is a ``ValueError``."""
        require_known_keys(data, cls, "healing training settings")
        d = dict(data)
        for k in ("kind_weights", "extra_layer_ks"):
            if k in d:
                d[k] = tuple(d[k])
        if "table" in d and not isinstance(d["table"], str):
            d["table"] = tuple(d["table"])
        return cls(**d)


@dataclass
class HealReport:
    """What a healing run did.

    Attributes:
        steps: Optimisation steps taken.
        stopped: ``"steps"`` (all done) or ``"time budget"``.
        best_step: Per group, the step whose weights were kept (0: none beat the untrained).
        best_val_kl: Per group, its mean validation KL there.
        validations: Per validation: ``{"step", "train_loss", "plans": {name: {"kl", "agreement"}}}``.
        train_loss: Mean training KL of each step.
        seconds: Training wall time (all sessions of a resumed run).
        data_seconds: Wall time of building the data (answers and the original's log-probabilities).
        n_train, n_val: Training sequences and validation prompts.
        load_average: 1-minute load average at the start and the end (the machine is shared).
        threads: Torch intra-op threads.
        resumed_from: Step a resumed run started at (0: fresh).
    """

    steps: int = 0
    stopped: str = ""
    best_step: dict[str, int] = field(default_factory=dict)
    best_val_kl: dict[str, float] = field(default_factory=dict)
    validations: list[dict[str, Any]] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    data_seconds: float = 0.0
    n_train: int = 0
    n_val: int = 0
    load_average: list[float] = field(default_factory=list)
    threads: int = 0
    resumed_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- batched decoding


@dataclass(frozen=True)
class Targets:
    """The original's next-token distribution at each answer position, kept as its top-k.

    Attributes:
        idx: ``[answer length, k]`` token ids of the top-k (int32).
        logp: Their log-probabilities.
        rest: ``[answer length]`` log of the probability outside the top-k.
    """

    idx: torch.Tensor
    logp: torch.Tensor
    rest: torch.Tensor


def top_k_targets(logits: torch.Tensor, k: int) -> Targets:
    """:class:`Targets` of ``logits`` ``[n, vocab]``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    top = lp.topk(k, dim=-1)
    rest = lp.scatter(1, top.indices, float("-inf")).logsumexp(-1)
    return Targets(top.indices.to(torch.int32).cpu(), top.values.cpu(), rest.cpu())


@torch.inference_mode()
def generate_with_targets(
    lm: PrunableLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    top_k: int | None = None,
) -> tuple[list[tuple[int, ...]], list[Targets | None]]:
    """Answers to many prompts at once (left-padded batches, one KV cache), under whatever plan is applied.

    Each answer is what the env compares against: the tokens up to the first end-of-sequence token,
    that token included when the model emitted it within ``max_new_tokens`` picks. Greedy by
    default; ``temperature > 0`` samples (seeded). With ``top_k``, also the :class:`Targets` of the
    distribution each answer token was picked from: the logits a teacher-forced pass over prompt +
    answer would give, here for free. A batch's matmuls round differently from a single prompt's,
    so a near-tie can break the other way than in ``PrunableLM.generate``.
    """
    from transformers import DynamicCache

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    dev = lm.device
    pad = min(lm.eos_ids) if lm.eos_ids else lm.bos_id
    gen = torch.Generator(device=dev).manual_seed(seed)
    answers: list[tuple[int, ...]] = [()] * len(prompts)
    targets: list[Targets | None] = [None] * len(prompts)
    # similar lengths together: less padding
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long, device=dev)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=dev)
        for r, i in enumerate(rows):
            n = len(prompts[i])
            ids[r, width - n :] = torch.tensor(list(prompts[i]), dtype=torch.long, device=dev)
            mask[r, width - n :] = 1
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        cache = DynamicCache(config=lm.model.config)
        picks: list[list[int]] = [[] for _ in rows]
        steps: list[Targets] = []
        done = [False] * len(rows)
        inp = ids
        for _ in range(max_new_tokens):
            logits = forward_with_cache(
                lm.model, inp, cache, attention_mask=mask, position_ids=pos, logits_to_keep=1
            )[:, -1].float()
            if top_k is not None:
                steps.append(top_k_targets(logits, top_k))
            if temperature > 0:
                tok = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)[:, 0]
            else:
                tok = logits.argmax(-1)
            for r, t in enumerate(tok.tolist()):
                if not done[r]:
                    picks[r].append(int(t))
                    done[r] = int(t) in lm.eos_ids
            if all(done):
                break
            inp = tok[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
        for r, i in enumerate(rows):
            answers[i] = tuple(picks[r])
            if top_k is not None:
                n = len(picks[r])
                targets[i] = Targets(torch.stack([s.idx[r] for s in steps[:n]]),
                                     torch.stack([s.logp[r] for s in steps[:n]]),
                                     torch.stack([s.rest[r] for s in steps[:n]]))
    return answers, targets


def batched_generate(
    lm: PrunableLM, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
    seed: int = 0, batch_size: int = 32,
) -> list[tuple[int, ...]]:
    """The answers of :func:`generate_with_targets` alone."""
    return generate_with_targets(lm, prompts, max_new_tokens, temperature=temperature, seed=seed,
                                 batch_size=batch_size)[0]


# ----------------------------------------------------------------------------- data


@dataclass
class HealData:
    """Token sequences and the original's targets for them.

    Attributes:
        seqs: Prompt + answer token ids per sequence.
        starts: Index of each sequence's first answer token (its prompt's length).
        greedy: Whether each answer is the original's greedy one (validation uses those).
        top_idx: Per sequence ``[answer length, top_k]`` token ids of the original's top-k.
        top_logp: Their log-probabilities under the original.
        rest_logp: Per sequence ``[answer length]`` log of the original's probability outside the top-k.
    """

    seqs: list[list[int]]
    starts: list[int]
    greedy: list[bool]
    top_idx: list[torch.Tensor]
    top_logp: list[torch.Tensor]
    rest_logp: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.seqs)


def _right_padded(
    lm: PrunableLM, seqs: Sequence[Sequence[int]], starts: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """``(ids [B, T], flat positions predicting answer tokens, (start, end) of each sequence's rows)``.

    Right padding needs no attention mask in a causal model: a position never sees what follows it.
    """
    pad = min(lm.eos_ids) if lm.eos_ids else lm.bos_id
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    gather: list[int] = []
    spans: list[tuple[int, int]] = []
    for r, (s, a) in enumerate(zip(seqs, starts, strict=True)):
        ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        first = len(gather)
        # position j predicts token j + 1: the answer tokens a .. len-1 are predicted at a-1 .. len-2
        gather.extend(r * width + j for j in range(a - 1, len(s) - 1))
        spans.append((first, len(gather)))
    return ids.to(lm.device), torch.tensor(gather, dtype=torch.long, device=lm.device), spans


@torch.no_grad()
def answer_logprobs(
    lm: PrunableLM, seqs: Sequence[Sequence[int]], starts: Sequence[int], batch_size: int = 16
) -> list[torch.Tensor]:
    """Per sequence, ``[answer length, vocab]`` float32 log-probabilities at the positions predicting its answer.

    One teacher-forced pass of the model as it stands (under whatever plan and healing are applied)
    over prompt + answer; ``starts[i]`` is the index of sequence ``i``'s first answer token.
    """
    out: list[torch.Tensor] = []
    for b in range(0, len(seqs), batch_size):
        chunk = range(b, min(len(seqs), b + batch_size))
        batch, gather, spans = _right_padded(lm, [seqs[i] for i in chunk], [starts[i] for i in chunk])
        h = lm.decoder(input_ids=batch, use_cache=False).last_hidden_state
        lp = torch.log_softmax(lm.model.lm_head(h.reshape(-1, h.shape[-1])[gather]).float(), dim=-1)
        out += [lp[a:z] for a, z in spans]
    return out


def build_data(
    lm: PrunableLM, prompts: Sequence[Prompt], config: HealTrainConfig, sampled: int, seed: int
) -> HealData:
    """The original's greedy (and ``sampled``) answers to ``prompts``, with its top-k targets along them."""
    if lm.active_plan is not None:
        raise RuntimeError("the data come from the original model: call outside lm.apply(...)")
    ids = [lm.encode_prompt(p.text, max_new_tokens=config.max_new_tokens) for p in prompts]
    data = HealData([], [], [], [], [], [])
    runs = [(0.0, 0)] + [(config.sample_temperature, seed + 1 + j) for j in range(sampled)]
    for temperature, s in runs:
        answers, targets = generate_with_targets(lm, ids, config.max_new_tokens, temperature=temperature, seed=s,
                                                 top_k=config.top_k)
        for p, a, t in zip(ids, answers, targets, strict=True):
            if a and t is not None:
                data.seqs.append([*p, *a])
                data.starts.append(len(p))
                data.greedy.append(temperature == 0.0)
                data.top_idx.append(t.idx)
                data.top_logp.append(t.logp)
                data.rest_logp.append(t.rest)
    return data


def split_prompts(prompts: Sequence[Prompt], val_fraction: float, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """Seeded split into training and validation prompts (at least one of each)."""
    if len(prompts) < 2:
        raise ValueError(
            f"healing needs at least 2 training prompts (some are held out for validation), got {len(prompts)}"
        )
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(prompts) - 1, max(1, round(val_fraction * len(prompts))))
    return [prompts[i] for i in sorted(order[n_val:])], [prompts[i] for i in sorted(order[:n_val])]


# ----------------------------------------------------------------------------- plans and loss


def training_plans(lm: PrunableLM, config: HealTrainConfig) -> dict[str, PruningPlan]:
    """``{name: plan}``: the table's pruned entries as the env builds them, and the extra layer counts."""
    table = make_table(config.table if isinstance(config.table, str) else list(config.table))
    plans: dict[str, PruningPlan] = {}
    for entry in table:
        if entry.kind not in ACTION_KINDS:
            continue
        plan = entry_plan(entry, lm)
        if plan_kind(plan) is not None:
            plans[entry.name] = plan
    seen = set(plans.values())
    for k in config.extra_layer_ks:
        if k >= lm.geometry.num_layers:
            raise ValueError(f"extra_layer_ks: {k} is not below the model's {lm.geometry.num_layers} layers")
        plan = layers_plan(lm.importance, lm.geometry, k, name=f"layers-k{k}")
        if plan not in seen:
            plans[plan.name] = plan
            seen.add(plan)
    if not plans:
        raise ValueError("the action table has no pruned plan to heal (only none / adapter entries)")
    return plans


def plan_weights(plans: Mapping[str, PruningPlan], kind_weights: Sequence[float]) -> torch.Tensor:
    """Draw probability of each plan: its kind's weight shared by the kind's plans."""
    kinds = [plan_kind(p) for p in plans.values()]
    per_kind = dict(zip(KINDS, kind_weights, strict=True))
    counts = {k: kinds.count(k) for k in KINDS}
    w = torch.tensor([per_kind[k] / counts[k] for k in kinds], dtype=torch.float64)
    if not w.sum() > 0:
        raise ValueError(f"kind_weights {tuple(kind_weights)} give every plan of the table weight 0")
    return w / w.sum()


def topk_kl(logq: torch.Tensor, idx: torch.Tensor, logp: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Per position ``KL(p || q)`` over the teacher's top-k tokens plus one outcome for all the others.

    ``logq`` ``[N, V]``: the student's log-probabilities; ``idx``, ``logp`` ``[N, K]``: the teacher's
    top-k tokens and log-probabilities; ``rest`` ``[N]``: log of the teacher's mass outside them.
    The coarse-grained KL is a lower bound of the full one and equals it when the rest is empty.
    """
    lq = logq.gather(1, idx)
    lq_rest = logq.scatter(1, idx, float("-inf")).logsumexp(-1)
    top = (logp.exp() * (logp - lq)).sum(-1)
    # 0 * log 0 = 0: a teacher with no mass outside its top-k adds nothing for the rest outcome
    tail = torch.where(rest > float("-inf"), rest.exp() * (rest - lq_rest), torch.zeros_like(rest))
    return top + tail


def batch_loss(lm: PrunableLM, data: HealData, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-position KL, per-position argmax == answer token)`` of the model as it stands on ``rows``."""
    batch, gather, _ = _right_padded(lm, [data.seqs[i] for i in rows], [data.starts[i] for i in rows])
    h = lm.decoder(input_ids=batch, use_cache=False).last_hidden_state
    logits = lm.model.lm_head(h.reshape(-1, h.shape[-1])[gather]).float()
    logq = torch.log_softmax(logits, dim=-1)
    dev = logq.device
    idx = torch.cat([data.top_idx[i] for i in rows]).to(dev, torch.long)
    logp = torch.cat([data.top_logp[i] for i in rows]).to(dev)
    rest = torch.cat([data.rest_logp[i] for i in rows]).to(dev)
    target = torch.cat([torch.tensor(data.seqs[i][data.starts[i]:], dtype=torch.long) for i in rows]).to(dev)
    return topk_kl(logq, idx, logp, rest), (logits.argmax(-1) == target).float()


@torch.no_grad()
def validate(lm: PrunableLM, data: HealData, plans: Mapping[str, PruningPlan], batch_size: int = 16
             ) -> dict[str, dict[str, float]]:
    """``{plan name: {"kl", "agreement"}}``: mean per answer token over the greedy validation sequences."""
    rows = [i for i in range(len(data)) if data.greedy[i]]
    out: dict[str, dict[str, float]] = {}
    for name, plan in plans.items():
        kls, agree = [], []
        with lm.apply(plan):
            for b in range(0, len(rows), batch_size):
                kl, ok = batch_loss(lm, data, rows[b : b + batch_size])
                kls.append(kl)
                agree.append(ok)
        out[name] = {"kl": float(torch.cat(kls).mean()), "agreement": float(torch.cat(agree).mean())}
    return out


def _lr(step: int, config: HealTrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr / 10`` at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    t = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


# ----------------------------------------------------------------------------- the run


def work_folder(out: str | os.PathLike[str]) -> Path:
    """Where an unfinished run keeps its data and checkpoint: ``.<out name>.partial`` beside ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _group_state(healing: PlanHealing, group: str) -> dict[str, torch.Tensor]:
    """A copy of one group's LoRA weights (state-dict keys ``pairs.<group>:<layer>:<projection>.A|B``)."""
    mine = f"pairs.{group}:"
    return {k: v.detach().clone() for k, v in healing.state_dict().items() if k.startswith(mine)}


def _init_from(
    lm: PrunableLM, folder: str | None, healing_config: HealingConfig, healing: PlanHealing
) -> dict[str, Any] | None:
    """Copy the weights of the healing folder ``folder`` into the fresh ``healing``; return what it was
    (folder, fingerprint, trained groups) for the run's key and report, or None without a folder."""
    if folder is None:
        return None
    start = load_healing(folder, lm)  # refuses a folder made for another model
    if start.config != healing_config:
        raise ValueError(f"init {folder} was trained with healing settings {start.config.to_dict()}, not "
                         f"{healing_config.to_dict()}; give the same --grouping, --rank, --alpha, --placement "
                         "and --targets, or leave out --init")
    with torch.no_grad():
        mine = healing.state_dict()
        for k, v in start.state_dict().items():  # its untrained pairs were not stored: they stay fresh
            mine[k].copy_(v.to(mine[k].dtype))
    return {"folder": str(folder), "fingerprint": start.fingerprint, "trained_groups": list(start.info.trained_groups)}


def train_healing(
    lm: PrunableLM,
    out: str | os.PathLike[str],
    config: HealTrainConfig | None = None,
    healing_config: HealingConfig | None = None,
    *,
    prompts: Sequence[Prompt] | None = None,
    force: bool = False,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[PlanHealing, HealReport]:
    """Train plan-conditional healing for ``lm`` and write it to the folder ``out``; return it and the report.

    Resumes from ``work_folder(out)`` when a run with the same model and settings stopped there
    (``fresh`` discards it). The model is left as it was (no healing attached).

    Raises:
        FileExistsError: ``out`` exists and ``force`` is not set.
        ValueError: bad settings, too few prompts, or a checkpoint of other settings (use ``fresh``).
    """
    from dynprune.tasks import load_prompts

    config = config or HealTrainConfig()
    healing_config = healing_config or HealingConfig()
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not is_healing_folder(out) and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} is not a healing folder; choose a new or empty folder")
    if lm.active_plan is not None:
        raise RuntimeError("train healing outside lm.apply(...)")
    check_writable(out.parent, "--out's folder")
    work = work_folder(out)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    report = HealReport(threads=torch.get_num_threads())

    # 1. data: split, answers, the original's targets (cached in the work folder)
    pool = list(prompts) if prompts is not None else load_prompts(config.prompts, split="train")
    train_p, val_p = split_prompts(pool, config.val_fraction, config.seed)
    data_key = _digest({"v": DATA_VERSION, "model": lm.model_id, "dtype": str(lm.dtype),
                        "train": [p.text for p in train_p], "val": [p.text for p in val_p],
                        **{k: getattr(config, k) for k in ("max_new_tokens", "sampled", "sample_temperature",
                                                             "top_k", "seed")}})
    from dynprune.models import cache_dir

    # shared by every run on the same model, prompts and data settings (other groupings, ranks, steps)
    data_file = cache_dir() / "healing-data" / f"{data_key}.pt"
    cached = torch.load(data_file, weights_only=False) if data_file.is_file() else None
    if cached is not None and cached.get("key") == data_key:
        train_d, val_d, report.data_seconds = cached["train"], cached["val"], cached["seconds"]
        log(f"heal: data from {data_file}")
    else:
        t0 = time.perf_counter()
        log(f"heal: the original's answers and top-{config.top_k} log-probabilities for {len(train_p)} training "
            f"and {len(val_p)} validation prompts ...")
        train_d = build_data(lm, train_p, config, config.sampled, config.seed)
        val_d = build_data(lm, val_p, config, 0, config.seed)
        report.data_seconds = time.perf_counter() - t0
        data_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(data_file) as tmp:
            torch.save({"key": data_key, "train": train_d, "val": val_d, "seconds": report.data_seconds}, tmp)
        log(f"heal: data built in {report.data_seconds:.0f} s: {len(train_d)} sequences")
    report.n_train, report.n_val = len(train_d), len(val_p)

    # 2. plans, weights, optimiser
    plans = training_plans(lm, config)
    names = list(plans)
    weights = plan_weights(plans, config.kind_weights)
    healing = PlanHealing.for_model(lm, healing_config, seed=config.seed)
    init = _init_from(lm, config.init, healing_config, healing)
    groups = sorted({healing.group_for(p) for p in plans.values()} - {None})
    healing.merged = False
    opt = torch.optim.AdamW(healing.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run_key = _digest({"data": data_key, "healing": healing_config.to_dict(), "train": config.to_dict(),
                       "plans": {n: p.to_dict() for n, p in plans.items()}, "init": init})
    gen = torch.Generator().manual_seed(config.seed + 7)
    step, elapsed = 0, 0.0
    best: dict[str, tuple[float, int, dict[str, torch.Tensor]]] = {}
    ckpt_file = work / "checkpoint.pt"
    if ckpt_file.is_file():
        ckpt = torch.load(ckpt_file, weights_only=False)
        if ckpt.get("key") != run_key:
            raise ValueError(
                f"{work} holds a checkpoint of another run (other model, data or settings); "
                "pass --fresh to discard it, or use another --out"
            )
        healing.load_state_dict(ckpt["healing"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        step, elapsed, best = ckpt["step"], ckpt["elapsed"], ckpt["best"]
        report.validations, report.train_loss = ckpt["validations"], ckpt["train_loss"]
        report.resumed_from = step
        log(f"heal: resuming at step {step} ({elapsed:.0f} s trained so far)")

    def checkpoint() -> None:
        with atomic_path(ckpt_file) as tmp:
            torch.save({"key": run_key, "healing": healing.state_dict(), "optimizer": opt.state_dict(),
                        "generator": gen.get_state(), "step": step, "elapsed": elapsed, "best": best,
                        "validations": report.validations, "train_loss": report.train_loss}, tmp)

    def evaluate() -> None:
        healing.clear_cache()
        val = validate(lm, val_d, plans)
        recent = report.train_loss[-config.eval_every:]
        report.validations.append({"step": step, "train_loss": sum(recent) / len(recent) if recent else None,
                                   "plans": val})
        for g in groups:
            mine = [val[n]["kl"] for n in names if healing.group_for(plans[n]) == g]
            score = sum(mine) / len(mine)
            if g not in best or score < best[g][0]:
                best[g] = (score, step, _group_state(healing, g))
        log(f"heal: step {step}: validation KL " + ", ".join(f"{n} {v['kl']:.3f}" for n, v in val.items()))

    # 3. steps
    lm.set_healing(healing)
    try:
        if not report.validations:
            evaluate()
            checkpoint()
        order: list[int] = []
        stopped = "steps"
        t_last = time.perf_counter()
        with Progress(config.steps, "heal", "steps", initial=step, value_name="KL", enabled=progress) as bar:
            while step < config.steps:
                if config.time_budget_s is not None and elapsed >= config.time_budget_s:
                    stopped = "time budget"
                    break
                if len(order) < config.batch_size:
                    order += torch.randperm(len(train_d), generator=gen).tolist()
                rows, order = order[: config.batch_size], order[config.batch_size :]
                name = names[int(torch.multinomial(weights, 1, generator=gen))]
                for group in opt.param_groups:
                    group["lr"] = _lr(step, config)
                with lm.apply(plans[name]):
                    kl, _ = batch_loss(lm, train_d, rows)
                    loss = kl.mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                step += 1
                report.train_loss.append(float(loss.detach()))
                now = time.perf_counter()
                elapsed += now - t_last
                t_last = now
                bar.update(1, report.train_loss[-1])
                if step % config.eval_every == 0 or step == config.steps:
                    evaluate()
                    checkpoint()
        if report.validations[-1]["step"] != step:
            evaluate()
            checkpoint()
    finally:
        lm.set_healing(None)
    report.steps, report.stopped, report.seconds = step, stopped, elapsed

    # 4. best weights per group, written whole
    with torch.no_grad():
        state = healing.state_dict()
        for g, (score, at, weights_g) in best.items():
            for k, v in weights_g.items():
                state[k].copy_(v)
            report.best_step[g], report.best_val_kl[g] = at, score
        healing.load_state_dict(state)
    healing.prune_untrained()
    healing.merged = True
    healing.requires_grad_(False)
    report.load_average = [load0, os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan]
    table = make_table(config.table if isinstance(config.table, str) else list(config.table))
    info = HealingInfo(
        model_id=lm.model_id,
        model_spec=lm.name,
        config=healing_config.to_dict(),
        table=[{"name": e.name, "kind": e.kind, "amount": e.amount, "layer_order": e.layer_order} for e in table],
        plans={n: p.to_dict() for n, p in plans.items()},
        # a group counts as trained when a step beat its start, or when it starts from a trained --init
        trained_groups=tuple(g for g in groups if report.best_step.get(g, 0) > 0
                             or (init is not None and g in init["trained_groups"])),
        training=config.to_dict(),
        report=report.to_dict(),
    )
    if not info.trained_groups:
        raise ValueError("no group beat the untrained model on the validation prompts; nothing to save "
                         "(train longer, or with another learning rate)")
    save_healing(healing, out, info, force=force, dtype=config.save_dtype)
    healing.info = dataclasses.replace(info, fingerprint=healing.fingerprint)
    healing.name = out.resolve().name
    shutil.rmtree(work, ignore_errors=True)
    return healing, report
