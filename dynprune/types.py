"""Typed result containers that cross module boundaries.

Every value that one part of dynprune hands to another (a prompt, a telemetry
snapshot, a generation, a score) is one of these frozen dataclasses, never a bare
dict or a long tuple. Fields that a machine may not have (a GPU, a battery) are
``float | None``: ``None`` means "this machine has no such thing", never zero.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """One prompt from a prompt source.

    Attributes:
        id: Stable, unique identifier within its source (e.g. ``"qa-0007"``).
        text: The user message given to the model.
        category: Free-form kind of prompt (``"qa"``, ``"code"``, ``"tool_call"`` ...).
        answer: Short gold answer; a response containing it earns task score 1.
        tools: JSON-serialisable tool schemas offered to the model (tool-call prompts).
        ground_truth: Expected function calls, BFCL style:
            ``[{"name": {"arg": [allowed values...]}}]``.
        split: ``"train"`` or ``"test"``.
        source: Where the prompt came from (``"dynprune"``, ``"bfcl:simple_python"``, a file path).
    """

    id: str
    text: str
    category: str = "general"
    answer: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    ground_truth: tuple[dict[str, Any], ...] = ()
    split: str = "train"
    source: str = "user"


@dataclass(frozen=True)
class TelemetrySnapshot:
    """Hardware state at one instant.

    A field is ``None`` when the machine does not have the thing it measures
    (no GPU, no battery). Fractions are in [0, 1].

    Attributes:
        cpu_util: CPU utilisation over all cores, fraction.
        mem_available_frac: Available RAM / total RAM.
        mem_available_gb: Available RAM in GiB.
        gpu_util: GPU utilisation fraction, ``None`` without a GPU.
        vram_free_frac: Free VRAM / total VRAM, ``None`` without a GPU.
        vram_free_gb: Free VRAM in GiB, ``None`` without a GPU.
        battery_frac: Battery charge fraction, ``None`` without a battery.
        on_battery: True when running from battery, ``None`` without a battery.
        timestamp: ``time.time()`` when the snapshot was taken.
        source: ``"live"``, ``"replay:<file>"`` or ``"scenario:<name>"``.
    """

    cpu_util: float | None
    mem_available_frac: float | None
    mem_available_gb: float | None
    gpu_util: float | None = None
    vram_free_frac: float | None = None
    vram_free_gb: float | None = None
    battery_frac: float | None = None
    on_battery: bool | None = None
    timestamp: float = 0.0
    source: str = "live"


@dataclass(frozen=True)
class FunctionCallScore:
    """Scores of a model's function-call output against the expected calls.

    Attributes:
        exact_match: The output string equals the reference string (whitespace-stripped).
        json_match: Output and reference parse as JSON and are equal as values.
        parsed: The output could be parsed into calls at all.
        call_ratio: Fraction of expected calls matched by a predicted call (name and all arguments).
        name_match: Fraction of expected function names present among the predicted calls.
        arg_match: Fraction of expected (name, argument) pairs whose predicted value is allowed.
    """

    exact_match: float
    json_match: float
    parsed: float
    call_ratio: float
    name_match: float
    arg_match: float


@dataclass(frozen=True)
class GenerationResult:
    """One timed generation.

    Attributes:
        prompt_ids: Token ids of the (formatted) prompt.
        output_ids: Generated token ids, without the prompt, without padding.
        text: Decoded generated text.
        prefill_s: Seconds for the forward pass over the prompt (time to first token).
        decode_s: Seconds for the remaining tokens.
        latency_s: ``prefill_s + decode_s``.
        new_tokens: ``len(output_ids)``.
        tokens_per_s: ``produced / latency_s``.
        produced: Tokens the model emitted, an end-of-sequence token included (each cost a forward pass).
    """

    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    text: str
    prefill_s: float
    decode_s: float
    latency_s: float
    new_tokens: int
    tokens_per_s: float
    produced: int = 0

    @property
    def per_token_s(self) -> float | None:
        """Seconds per decoded token after the first (None when only one token was produced)."""
        return self.decode_s / (self.produced - 1) if self.produced > 1 else None


@dataclass(frozen=True)
class ScoreResult:
    """Teacher-forced score of a continuation given a context.

    Attributes:
        nll: Mean negative log-likelihood per scored token (nats).
        perplexity: ``exp(nll)``.
        n_tokens: Number of scored tokens.
        agreement: Fraction of scored positions where the model's argmax equals the target token.
        argmax_ids: The model's argmax token at each scored position.
        forward_s: Seconds for the forward pass.
    """

    nll: float
    perplexity: float
    n_tokens: int
    agreement: float
    argmax_ids: tuple[int, ...] = ()
    forward_s: float = 0.0


@dataclass(frozen=True)
class Fidelity:
    """Agreement of a pruned model's output with the full model's output.

    Attributes:
        token_agreement: Position-wise agreement over the longer of the two outputs.
        prefix_agreement: Length of the common prefix / length of the reference.
        exact_match: 1.0 when the two token sequences are identical, else 0.0.
    """

    token_agreement: float
    prefix_agreement: float
    exact_match: float


@dataclass(frozen=True)
class PromptFeatures:
    """Complexity features of one prompt under the full model.

    Attributes:
        n_tokens: Token count of the formatted prompt.
        perplexity: Perplexity of the prompt under the full model.
        complexity: CASRAP score ``0.6*min(1, n/200) + 0.4*min(1, ppl/50)``.
    """

    n_tokens: int
    perplexity: float
    complexity: float


@dataclass(frozen=True)
class ModelGeometry:
    """Shape of a decoder-only model, per layer where it can vary.

    Attributes:
        num_layers: Number of decoder layers.
        num_heads: Query heads per layer.
        num_kv_heads: Key/value heads per layer (GQA groups).
        head_dim: Size of one head.
        hidden_size: Width of the residual stream.
        intermediate_size: FFN channels per layer.
        max_position: Longest context the model accepts, in tokens.
        vocab_size: Vocabulary size.
    """

    num_layers: int
    num_heads: tuple[int, ...]
    num_kv_heads: tuple[int, ...]
    head_dim: int
    hidden_size: int
    intermediate_size: tuple[int, ...]
    max_position: int
    vocab_size: int

    @property
    def group_size(self) -> tuple[int, ...]:
        """Query heads per KV head, per layer."""
        return tuple(h // g for h, g in zip(self.num_heads, self.num_kv_heads, strict=True))


@dataclass(frozen=True)
class Importance:
    """Calibrated importance scores of a model (higher = more important).

    Attributes:
        model_id: Identity of the model they were measured on.
        block_influence: Per layer, ShortGPT's 1 - mean cos(input, output).
        heads: Per layer, one score per query head.
        channels: Per layer, one score per FFN channel.
        n_prompts: Calibration prompts used.
        seq_len: Tokens per calibration prompt.
    """

    model_id: str
    block_influence: tuple[float, ...]
    heads: tuple[tuple[float, ...], ...]
    channels: tuple[tuple[float, ...], ...]
    n_prompts: int = 0
    seq_len: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StepRecord:
    """One environment step, as written to ``metrics.jsonl`` (one JSON object per line).

    Baseline = the full model on the same prompt; pruned = the model under the
    chosen plan. Latencies are seconds; in ``profiled`` timing mode the pruned
    latency comes from the latency profile, not from a generation.

    Attributes:
        episode: Episode index (0-based) within the run.
        step: Step index within the episode.
        split: Prompt split (``"train"``/``"test"``).
        prompt_id: Id of the prompt.
        prompt_tokens: Token count of the prompt.
        prompt_perplexity: Perplexity of the prompt under the full model.
        complexity: CASRAP complexity score of the prompt.
        action: Discrete action id.
        action_name: Name of the action-table entry.
        plan: ``PruningPlan.to_dict()`` of the applied plan.
        timing: ``"modelled"``, ``"live"`` or ``"profiled"``.
        baseline_latency_s, pruned_latency_s: Latency of the full and pruned model.
        baseline_tokens_per_s, pruned_tokens_per_s: Generation throughput.
        speedup: ``baseline_latency_s / pruned_latency_s - 1`` (0.2 = 20 % faster; negative = slower).
        baseline_ppl, pruned_ppl: Perplexity of the full model's answer under each model.
        ppl_change: ``pruned_ppl / baseline_ppl - 1``.
        token_agreement: Token agreement of the pruned output (or teacher-forced argmax) with the full model's
            answer (``fidelity`` in records written before the rename: :func:`dynprune.records.record_from_dict`).
        prefix_fidelity: Share of the full answer reproduced before the first different token (what the
            rewards see as fidelity: teacher-forced scoring measures it exactly as a generation does).
        task_score: Gold-answer / function-call score when the prompt has ground truth, else None.
        kept_fraction: Fraction of per-token matmul FLOPs kept by the plan.
        reward: Reward of the step.
        budget_s: Latency budget of the step (load factor applied, like ``pruned_latency_s``), or None.
        terminated: The episode ended at this step (e.g. CASRAP early termination).
        observation: The observation the agent acted on.
        agent: Name of the agent that chose the action.
        healing: The plan-conditional healing active in the step (``"<name>@<fingerprint>:<group>"``,
            ``dynprune.healing``), or None: no healing, or the ``none`` action (never healed).
        kv_bytes, baseline_kv_bytes: KV-cache bytes the plan and the full model hold at their peak on
            this prompt and answer (``Evaluation.kv_bytes``); None in records that predate them.
        memory_term: What the memory pressure added to the reward (``dynprune.rewards.memory_term``).
    """

    episode: int
    step: int
    split: str
    prompt_id: str
    prompt_tokens: int
    prompt_perplexity: float
    complexity: float
    action: int
    action_name: str
    plan: dict[str, Any]
    timing: str
    baseline_latency_s: float
    pruned_latency_s: float
    baseline_tokens_per_s: float
    pruned_tokens_per_s: float
    speedup: float
    baseline_ppl: float
    pruned_ppl: float
    ppl_change: float
    token_agreement: float
    task_score: float | None
    kept_fraction: float
    reward: float
    terminated: bool
    observation: tuple[float, ...] = ()
    agent: str = ""
    prefix_fidelity: float | None = None
    budget_s: float | None = None
    healing: str | None = None
    kv_bytes: int | None = None
    baseline_kv_bytes: int | None = None
    memory_term: float = 0.0


@dataclass(frozen=True)
class Baseline:
    """The full model's answer to one prompt, computed once and cached.

    Attributes:
        prompt_ids: Token ids of the formatted prompt.
        answer_ids: Greedy answer tokens (with the end-of-sequence token when the model stopped).
        text: Decoded answer.
        latency_s: Latency of the greedy generation (``len(answer_ids)`` tokens produced).
        tokens_per_s: Throughput of that generation.
        prefill_s: Its prefill time (time to first token).
        per_token_s: Its decode time per token after the first.
        ppl: Perplexity of the answer under the full model (teacher-forced).
        task_score: Score of the answer against the prompt's ground truth, or None.
        features: Prompt features (token count, perplexity, complexity).
    """

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    text: str
    latency_s: float
    tokens_per_s: float
    prefill_s: float
    per_token_s: float
    ppl: float
    task_score: float | None
    features: PromptFeatures



@dataclass(frozen=True)
class Evaluation:
    """One plan measured on one prompt.

    Attributes:
        timing: ``"modelled"`` (latency model + one memoised forward pass), ``"live"`` (the plan and the
            full model timed side by side) or ``"profiled"`` (latency profile + one forward pass).
        speedup: ``T_full(n) / T_pruned(n) - 1``: both models timed generating the same ``n``
            tokens (the full model's answer length) after the same prompt.
        latency_s: Pruned latency for those tokens.
        tokens_per_s: Pruned throughput.
        ppl: Perplexity of the full model's answer under the pruned model.
        token_agreement: Live: token agreement of the pruned greedy output with the full answer;
            profiled: teacher-forced argmax agreement with the full answer.
        exact_match: Live: 1.0 for an identical answer; profiled: 1.0 when every argmax agrees.
        task_score: Ground-truth score of the pruned answer (live), or None.
        text: The pruned answer (live only).
        kept_fraction: Fraction of per-token matmul FLOPs kept.
        seconds: Wall time the evaluation itself took (cost accounting).
        prefix_fidelity: Share of the full answer the pruned model reproduces before its first
            different token. The same number in both timings (greedy decoding is deterministic:
            the teacher-forced argmax agrees with the full answer up to position j exactly when
            the free-running generation does), so rewards use it: quality learnt from profiled
            steps carries over to live ones. ``token_agreement`` also counts tokens
            that line up again after a divergence, which only a generation can show; teacher-forced
            agreement overestimates it (SmolLM2-135M, the same 80 prompts, table plans other than
            none / layers-25 % / ffn-25 %: 0.62-0.76 teacher-forced vs 0.08-0.27 live;
            benchmarks/results/policy_headroom_casrap_{profiled,live}-n80_logged.json).
        kv_bytes: KV-cache bytes the plan holds at its peak, while the answer's last token is
            computed (running layers x kept KV heads x tokens held: a KV window holds only its
            sinks and recent tokens; ``dynprune.pruning.kv.kv_bytes``); 0 when not computed.
        full_kv_bytes: The same for the full model on the same prompt and answer.
    """

    timing: str
    speedup: float
    latency_s: float
    tokens_per_s: float
    ppl: float
    token_agreement: float
    exact_match: float
    task_score: float | None
    text: str | None
    kept_fraction: float
    seconds: float
    prefix_fidelity: float = 1.0
    kv_bytes: int = 0
    full_kv_bytes: int = 0

    @property
    def kv_fraction(self) -> float:
        """``kv_bytes / full_kv_bytes``: the share of the full model's KV cache the plan holds (1.0 unknown)."""
        return self.kv_bytes / self.full_kv_bytes if self.full_kv_bytes > 0 else 1.0

    @property
    def full_latency_s(self) -> float:
        """The full model's latency this speed-up compares against: ``latency_s * (1 + speedup)``.

        Live: the full model timed beside the plan; modelled: the latency model's prediction.
        """
        return self.latency_s * (1.0 + self.speedup)


@dataclass(frozen=True)
class PlanShapes:
    """What a plan leaves of a model, in the quantities its latency depends on (``dynprune.latency_model``).

    Attributes:
        layers: Decoder layers that run (attention and FFN).
        attn_params: Weights of the running layers' q, k, v and o projections.
        ffn_params: Weights of the running layers' gate, up and down projections.
        q_width: Sum over running layers of kept query heads x head dim.
        kv_width: Sum over running layers of kept KV heads x head dim.
        ragged_layers: Running layers whose kept query heads are unevenly spread over the kept KV
            heads (their attention gathers K/V per query head).
        ragged_width: Sum over those layers of kept query heads x head dim.
        adapter_layers: Layers replaced by an adapter.
        adapter_params: Weights of those adapters.
    """

    layers: int
    attn_params: int
    ffn_params: int
    q_width: int
    kv_width: int
    ragged_layers: int = 0
    ragged_width: int = 0
    adapter_layers: int = 0
    adapter_params: int = 0


@dataclass(frozen=True)
class QualityMetrics:
    """Teacher-forced quality of one plan on one prompt: the pruned model over prompt + the full answer.

    Deterministic for a (model, adapters, prompt, plan, generation settings): measured once and
    memoised (``dynprune.quality_memo``).

    Attributes:
        ppl: Perplexity of the full model's answer under the pruned model.
        token_agreement: Share of answer positions where the pruned model's argmax is the answer's token.
        exact_match: 1.0 when every argmax agrees (the pruned greedy answer is the full one).
        prefix_fidelity: Share of the answer the pruned model reproduces before its first different token.
        task_score: The full answer's task score when the pruned answer is the full one, else None.
    """

    ppl: float
    token_agreement: float
    exact_match: float
    prefix_fidelity: float
    task_score: float | None = None


@dataclass(frozen=True)
class PairedRun:
    """The full model and a plan timed token by token, interleaved, on the same prompt and answer length.

    Attributes:
        full: The full model's timed generation (its greedy answer, exactly ``n`` tokens).
        pruned: The pruned model's timed generation (exactly ``n`` tokens, EOS ignored).
        full_steps: Seconds of each of the full model's decode steps (after the prefill).
        pruned_steps: The same for the plan; step ``j`` of both ran one after the other.
    """

    full: GenerationResult
    pruned: GenerationResult
    full_steps: tuple[float, ...] = ()
    pruned_steps: tuple[float, ...] = ()

    @property
    def sum_speedup(self) -> float:
        """``T_full / T_pruned - 1`` of the two generations' summed times."""
        return self.full.latency_s / self.pruned.latency_s - 1.0

    @property
    def full_latency_s(self) -> float:
        """The full model's generation time with each decode step at the steps' median (robust to load bursts)."""
        if not self.full_steps:
            return self.full.latency_s
        return self.full.prefill_s + len(self.full_steps) * statistics.median(self.full_steps)

    @property
    def pruned_latency_s(self) -> float:
        """The plan's generation time: its prefill, and its steps at the full model's median step over the
        median ratio of adjacent steps (full step / plan step): a load burst that hits one pass of a pair
        moves one ratio of many, not the total."""
        if not self.full_steps:
            return self.pruned.latency_s
        ratio = statistics.median(f / p for f, p in zip(self.full_steps, self.pruned_steps, strict=True))
        return self.pruned.prefill_s + len(self.pruned_steps) * statistics.median(self.full_steps) / ratio

    @property
    def speedup(self) -> float:
        """``T_full / T_pruned - 1`` from :attr:`full_latency_s` and :attr:`pruned_latency_s` (the live step's)."""
        return self.full_latency_s / self.pruned_latency_s - 1.0


@dataclass(frozen=True)
class LatencyPoint:
    """One (plan, prompt length, answer length) timed interleaved with the full model.

    Attributes:
        kind: What kind of plan (``layers``, ``heads``, ``ffn``, ``mixed``, ``adapters`` or a table name).
        plan: ``PruningPlan.to_dict()`` of the plan.
        full: Shapes of the full model.
        shapes: Shapes of the plan.
        prompt_tokens: Prompt length ``n``.
        new_tokens: Tokens generated ``N`` (exactly; end-of-sequence ignored).
        full_runs: ``(prefill seconds, decode seconds)`` of each full-model run.
        plan_runs: The same for the plan; run ``r`` of both was taken side by side (forward
            passes interleaved, ``dynprune.paired_timing``).
        full_steps: Seconds of each decode step of each full-model run (empty if not recorded).
        plan_steps: The same for the plan.
    """

    kind: str
    plan: dict[str, Any]
    full: PlanShapes
    shapes: PlanShapes
    prompt_tokens: int
    new_tokens: int
    full_runs: tuple[tuple[float, float], ...]
    plan_runs: tuple[tuple[float, float], ...]
    full_steps: tuple[tuple[float, ...], ...] = ()
    plan_steps: tuple[tuple[float, ...], ...] = ()

    @property
    def ratios(self) -> tuple[float, ...]:
        """``T_full / T_plan`` of each repeat (whole generations taken side by side)."""
        return tuple(sum(f) / sum(p) for f, p in zip(self.full_runs, self.plan_runs, strict=True))

    @property
    def measured_ratio(self) -> float:
        """The median of :attr:`ratios`: the point's measured speed-up as a ratio."""
        return statistics.median(self.ratios)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyPoint:
        """Inverse of ``dataclasses.asdict``."""
        return cls(
            kind=d["kind"], plan=dict(d["plan"]), full=PlanShapes(**d["full"]), shapes=PlanShapes(**d["shapes"]),
            prompt_tokens=int(d["prompt_tokens"]), new_tokens=int(d["new_tokens"]),
            full_runs=tuple((float(a), float(b)) for a, b in d["full_runs"]),
            plan_runs=tuple((float(a), float(b)) for a, b in d["plan_runs"]),
            full_steps=tuple(tuple(float(x) for x in run) for run in d.get("full_steps", ())),
            plan_steps=tuple(tuple(float(x) for x in run) for run in d.get("plan_steps", ())),
        )
