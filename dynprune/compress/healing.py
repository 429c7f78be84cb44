"""Healing and distillation: train a compressed student on token windows, with early stopping.

One loop (:func:`train_student`) serves both uses:

- **Healing** (``lora=True``): LoRA adapters through ``peft`` on every attention and MLP
  projection (defaults r 32, alpha 16, lr 2e-4: the small-system recipe), merged into the
  weights at the end, so the healed model is a plain model of the same shape.
- **Distillation** (``lora=False``): every weight of the student trains.

The loss is either the plain next-token cross-entropy (``loss="ce"``) or knowledge
distillation to the teacher's logits (``loss="kd"``, Hinton et al. 2015):
``kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - kd_weight) * CE``
(the ``T^2`` keeps the gradient scale independent of the temperature).

Early stopping: every ``eval_every`` steps the same loss is measured on held-out
validation windows; training stops after ``patience`` evaluations without improvement
and the best weights seen are restored.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynprune.validation import require_at_least, require_in_range, require_one_of, require_positive

LOSSES = ("ce", "kd")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a healing / distillation run.

    Attributes:
        loss: ``"ce"`` (next-token) or ``"kd"`` (KL to the teacher's logits, plus CE by ``kd_weight``).
        temperature: Softmax temperature of the KD term.
        kd_weight: Weight of the KD term (the rest goes to CE); used with ``loss="kd"``.
        lora: Train LoRA adapters (healing) instead of every weight (distillation).
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target_modules: Projections that get LoRA adapters.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_steps: Optimisation steps at most.
        batch_size: Windows per step.
        eval_every: Steps between validation evaluations.
        patience: Evaluations without improvement before stopping.
        seed: Seed of the batch order and LoRA initialisation.
    """

    loss: str = "ce"
    temperature: float = 2.0
    kd_weight: float = 1.0
    lora: bool = True
    r: int = 32
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = PROJECTIONS
    lr: float = 2e-4
    weight_decay: float = 0.0
    max_steps: int = 200
    batch_size: int = 4
    eval_every: int = 20
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        require_one_of(self, "loss", LOSSES)
        require_positive(self, "temperature", "lr")
        require_in_range(self, 0, 1, "kd_weight")
        require_in_range(self, 0, 1, "dropout", interval="[)")
        require_at_least(self, 1, "r", "alpha", "max_steps", "batch_size", "eval_every", "patience")
        bad = [m for m in self.target_modules if m not in PROJECTIONS]
        if bad or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {PROJECTIONS}, got {self.target_modules}")


@dataclass
class TrainReport:
    """What a healing / distillation run did.

    Attributes:
        config: The settings (as a dict).
        val_loss: Validation loss (the training objective) at each evaluation, step 0 first.
        val_ce: Validation next-token cross-entropy at each evaluation.
        eval_steps: Step of each evaluation.
        best_step: Step whose weights were kept.
        steps: Optimisation steps run.
        stopped_early: True when patience ran out before ``max_steps``.
        trainable_params: Parameters that trained.
        n_train, n_val: Training / validation windows.
        seconds: Wall time of the run.
    """

    config: dict[str, Any]
    val_loss: list[float] = field(default_factory=list)
    val_ce: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    best_step: int = 0
    steps: int = 0
    stopped_early: bool = False
    trainable_params: int = 0
    n_train: int = 0
    n_val: int = 0
    seconds: float = 0.0

    @property
    def val_ce_before(self) -> float:
        """Validation cross-entropy before training."""
        return self.val_ce[0]

    @property
    def val_ce_best(self) -> float:
        """Validation cross-entropy of the kept weights."""
        return self.val_ce[self.eval_steps.index(self.best_step)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["val_ce_before"], d["val_ce_best"] = self.val_ce_before, self.val_ce_best
        return d


def objective(
    logits: torch.Tensor, input_ids: torch.Tensor, teacher_logits: torch.Tensor | None, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, ce)`` of student ``logits`` on ``input_ids`` windows (next-token targets)."""
    s = logits[:, :-1].float()
    target = input_ids[:, 1:]
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), target.reshape(-1))
    if config.loss == "ce":
        return ce, ce
    assert teacher_logits is not None
    t = config.temperature
    # Hinton et al.: KL(p_teacher^T || p_student^T) * T^2, averaged over token positions.
    log_ps = F.log_softmax(s / t, dim=-1)
    log_pt = F.log_softmax(teacher_logits[:, :-1].float() / t, dim=-1)
    kl = F.kl_div(log_ps.reshape(-1, s.shape[-1]), log_pt.reshape(-1, s.shape[-1]), log_target=True,
                  reduction="batchmean")
    loss = config.kd_weight * t * t * kl + (1.0 - config.kd_weight) * ce
    return loss, ce


def _wrap_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


@torch.no_grad()
def _validate(
    model: nn.Module, windows: torch.Tensor, teacher: nn.Module | None, config: TrainConfig
) -> tuple[float, float]:
    model.eval()
    loss_sum = ce_sum = 0.0
    for start in range(0, windows.shape[0], config.batch_size):
        batch = windows[start : start + config.batch_size]
        t_logits = teacher(input_ids=batch, use_cache=False).logits if config.loss == "kd" else None
        loss, ce = objective(model(input_ids=batch, use_cache=False).logits, batch, t_logits, config)
        loss_sum += loss.item() * batch.shape[0]
        ce_sum += ce.item() * batch.shape[0]
    return loss_sum / windows.shape[0], ce_sum / windows.shape[0]


def train_student(
    student: nn.Module,
    train_windows: torch.Tensor,
    val_windows: torch.Tensor,
    config: TrainConfig,
    teacher: nn.Module | None = None,
) -> tuple[nn.Module, TrainReport]:
    """Train ``student`` on ``train_windows`` (``[n, seq_len]`` token ids); return ``(model, report)``.

    With ``config.lora`` the returned model is the student with the best LoRA weights merged in
    (a plain ``transformers`` model). ``teacher`` is required for ``loss="kd"``; it is only run.
    The student ends in eval mode with ``requires_grad`` off.
    """
    if config.loss == "kd" and teacher is None:
        raise ValueError("loss 'kd' needs a teacher model")
    for name, w in (("train_windows", train_windows), ("val_windows", val_windows)):
        if w.dim() != 2 or w.shape[0] < 1 or w.shape[1] < 2:
            raise ValueError(f"{name} must be [n >= 1, seq_len >= 2] token ids, got shape {tuple(w.shape)}")
    device = next(student.parameters()).device
    train_windows, val_windows = train_windows.to(device), val_windows.to(device)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(config.seed)
    if config.lora:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = _wrap_lora(student, config)
    else:
        model = student
        model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    report = TrainReport(config=asdict(config), n_train=train_windows.shape[0], n_val=val_windows.shape[0])
    report.trainable_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def trainable_state() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    def evaluate(step: int) -> float:
        loss, ce = _validate(model, val_windows, teacher, config)
        report.val_loss.append(loss)
        report.val_ce.append(ce)
        report.eval_steps.append(step)
        return loss

    best_loss, best_state, bad = evaluate(0), trainable_state(), 0
    step = 0
    while step < config.max_steps and bad < config.patience:
        order = torch.randperm(train_windows.shape[0], generator=gen)
        for start in range(0, len(order), config.batch_size):
            batch = train_windows[order[start : start + config.batch_size].to(device)]
            model.train()
            t_logits = None
            if config.loss == "kd":
                with torch.no_grad():
                    t_logits = teacher(input_ids=batch, use_cache=False).logits
            loss, _ = objective(model(input_ids=batch, use_cache=False).logits, batch, t_logits, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            report.train_loss.append(loss.item())
            step += 1
            if step % config.eval_every == 0 or step == config.max_steps:
                val = evaluate(step)
                if val < best_loss:
                    best_loss, best_state, bad, report.best_step = val, trainable_state(), 0, step
                else:
                    bad += 1
            if step >= config.max_steps or bad >= config.patience:
                break
    report.steps = step
    report.stopped_early = bad >= config.patience and step < config.max_steps
    # Keep the best weights seen on the validation windows.
    with torch.no_grad():
        named = dict(model.named_parameters())
        for k, v in best_state.items():
            named[k].copy_(v)
    if config.lora:
        model = model.merge_and_unload()
    model.eval().requires_grad_(False)
    report.seconds = time.perf_counter() - t0
    return model, report


def split_windows(windows: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle ``windows`` (seeded) and split off ``val_fraction`` of them (at least one) for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = windows.shape[0]
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"{n} windows are too few to hold out {n_val} for validation")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return windows[order[n_val:]], windows[order[:n_val]]
