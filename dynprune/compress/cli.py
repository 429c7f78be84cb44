"""``dynprune compress ...``: static compression baselines from the command line.

Each method loads the source model, compresses a copy, evaluates it against the source
(unless ``--no-eval``), and writes one folder atomically: the model in Hugging Face format,
its tokenizer, ``dynprune_compress.json`` (method, settings, source model, size) and
``eval.json`` (size, compression ratio, latency and tokens/s, perplexity, fidelity, task score).

    dynprune compress layers   --model M --out DIR --select block_influence --k 3 --heal kd
    dynprune compress sparsify --model M --out DIR --method wanda --sparsity 0.5
    dynprune compress quantize --model M --out DIR --format int8
    dynprune compress distill  --model M --out DIR --select angular --k 3 --steps 200
    dynprune compress eval DIR          # re-measure a folder against its source model

The folder is a model spec everywhere else: ``load_model(DIR)``, ``--model DIR``,
``gym.make("DynPrune-v0", model=DIR)``, so dynamic pruning can sit on top of it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynprune.cli_common import add_model_args, load_model_from_args


def _check_out(args: argparse.Namespace) -> None:
    from dynprune.compress.folder import check_replaceable

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"{out} already exists; pass --force to replace it")
    check_replaceable(out)  # even with --force: only a folder compress wrote is replaced


def _train_config(args: argparse.Namespace, **over: object):  # noqa: ANN202 - TrainConfig, imported lazily
    from dynprune.compress.healing import TrainConfig

    kw = dict(
        temperature=args.temperature,
        r=args.lora_r,
        alpha=args.lora_alpha,
        lr=args.lr,
        max_steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        patience=args.patience,
        seed=args.seed,
    )
    kw.update(over)
    return TrainConfig(**kw)


def _data_config(args: argparse.Namespace):  # noqa: ANN202
    from dynprune.compress.pipeline import DataConfig

    return DataConfig(seq_len=args.seq_len, max_windows=args.max_windows, seed=args.seed)


def _eval_config(args: argparse.Namespace):  # noqa: ANN202
    from dynprune.compress.evaluate import EvalConfig

    return EvalConfig(
        n_prompts=args.eval_prompts, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
        timing_tokens=args.timing_tokens,
    )  # fmt: skip


def _finish(args: argparse.Namespace, lm, compressed) -> int:  # noqa: ANN001
    from dynprune.compress.evaluate import evaluate
    from dynprune.compress.folder import save_compressed

    meta = compressed.metadata
    evaluation = None
    if args.eval:
        print("evaluating against the source model ...", flush=True)
        evaluation = evaluate(lm, compressed.model, _eval_config(args))
    out = save_compressed(
        compressed.to_save, lm.tokenizer, args.out, meta, evaluation=evaluation, force=args.force
    )
    print(f"{meta.method} {json.dumps(meta.settings, default=str)}")
    print(f"layers {meta.num_layers}, size {meta.size_mb:.2f} MiB (source {meta.source_size_mb:.2f}, "
          f"x{meta.compression_ratio:.2f} smaller)")
    for key in ("healing", "training"):
        if key in meta.report:
            r = meta.report[key]
            print(f"{key}: val CE {r['val_ce_before']:.4f} -> {r['val_ce_best']:.4f} in {r['steps']} steps "
                  f"(best step {r['best_step']}, {r['seconds']:.1f} s)")
    if "sparsity_reached" in meta.report:
        print(f"sparsity reached {meta.report['sparsity_reached']:.4f}")
    if evaluation is not None:
        print_evaluation(evaluation)
    print(f"wrote {out}")
    return 0


def print_evaluation(e: dict) -> None:
    """Print the main numbers of an evaluation record."""
    s = e["speedup"]
    print(f"perplexity {e['perplexity']:.3f} (source {e['source_perplexity']:.3f}); "
          f"teacher-forced agreement {e['teacher_forced_agreement']:.3f}; KL {e['kl_to_source']:.4f}")
    print(f"greedy answers: token agreement {e['generation_token_agreement']:.3f}, "
          f"exact {e['generation_exact_match']:.2f}; task score {e['task_score']} (source {e['source_task_score']})")
    print(f"speed-up x{s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}, {s['n']} repeats); "
          f"{e['tokens_per_s']:.1f} tokens/s (source {e['source_tokens_per_s']:.1f})")


def cmd_layers(args: argparse.Namespace) -> int:
    """Remove layers, optionally heal with LoRA; write the folder."""
    from dynprune.compress.pipeline import compress_layers

    _check_out(args)
    heal = None if args.heal == "none" else args.heal
    train, data = _train_config(args), _data_config(args)
    lm = load_model_from_args(args, calibrate=args.select == "block_influence")
    return _finish(args, lm, compress_layers(lm, args.select, args.k, heal=heal, train=train, data=data))


def cmd_distill(args: argparse.Namespace) -> int:
    """Distil a layer-removed student (every weight, KL + CE); write the folder."""
    from dynprune.compress.pipeline import compress_distill

    _check_out(args)
    train = _train_config(args, loss="kd", lora=False, kd_weight=args.kd_weight)
    data = _data_config(args)
    lm = load_model_from_args(args, calibrate=args.select == "block_influence")
    return _finish(args, lm, compress_distill(lm, args.select, args.k, train=train, data=data))


def cmd_sparsify(args: argparse.Namespace) -> int:
    """Magnitude / Wanda / 2:4 pruning; write the folder."""
    from dynprune.compress.pipeline import compress_sparsity
    from dynprune.compress.sparsity import SparsityConfig

    _check_out(args)
    config = SparsityConfig(method=args.method, sparsity=0.5 if args.method == "2:4" else args.sparsity)
    data = _data_config(args)
    lm = load_model_from_args(args)
    return _finish(args, lm, compress_sparsity(lm, config, data))


def cmd_quantize(args: argparse.Namespace) -> int:
    """FP16 / BF16 / INT8 / NF4; write the folder."""
    from dynprune.compress.pipeline import compress_quantize
    from dynprune.compress.quantize import check_format, require_cuda_bnb
    from dynprune.models import resolve_device

    _check_out(args)
    check_format(args.format)
    if args.format == "nf4":
        require_cuda_bnb(resolve_device(args.device))  # fail before loading anything
    lm = load_model_from_args(args)
    return _finish(args, lm, compress_quantize(lm, args.format))


def cmd_eval(args: argparse.Namespace) -> int:
    """Re-evaluate a compressed folder against its source model; rewrite its eval.json."""
    from dynprune.compress.evaluate import evaluate
    from dynprune.compress.folder import read_metadata, write_evaluation
    from dynprune.metrics import fix_threads
    from dynprune.models import load_model

    meta = read_metadata(args.folder)  # a folder without metadata fails here, before any loading
    fix_threads(args.threads)
    source = load_model(args.source or meta.source_model, device=args.device)
    if source.model_id != meta.source_model_id:
        raise ValueError(
            f"{args.folder} was made from {meta.source_model_id!r}, but the source loaded is {source.model_id!r}; "
            "pass --source with the model it was made from"
        )
    compressed = load_model(args.folder, device=args.device)
    evaluation = evaluate(source, compressed.model, _eval_config(args))
    print_evaluation(evaluation)
    print(f"wrote {write_evaluation(args.folder, evaluation)}")
    return 0


def _common(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        add_model_args(p)
        p.add_argument("--out", required=True, help="compressed model folder to write (atomically)")
        p.add_argument("--force", action="store_true", help="replace an existing --out folder")
        p.add_argument("--seq-len", type=int, default=64, help="tokens per calibration / training window")
        p.add_argument("--max-windows", type=int, default=256, help="windows cut from the train split, at most")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                       help="evaluate against the source model and write eval.json")
    p.add_argument("--eval-prompts", type=int, default=10, help="held-out prompts answered by both models")
    p.add_argument("--max-new-tokens", type=int, default=24, help="answer length of those prompts")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per model (interleaved)")
    p.add_argument("--timing-tokens", type=int, default=32, help="tokens per timed generation")


def _training(p: argparse.ArgumentParser, steps: int, lr: float) -> None:
    p.add_argument("--steps", type=int, default=steps, help="optimisation steps at most")
    p.add_argument("--lr", type=float, default=lr, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=4, help="windows per step")
    p.add_argument("--eval-every", type=int, default=20, help="steps between validation checks")
    p.add_argument("--patience", type=int, default=3, help="validation checks without improvement before stopping")
    p.add_argument("--temperature", type=float, default=2.0, help="KD softmax temperature")
    p.add_argument("--lora-r", type=int, default=32, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``compress layers|sparsify|quantize|distill|eval`` to the ``dynprune`` sub-parsers."""
    from dynprune.compress.quantize import FORMATS
    from dynprune.compress.removal import SELECTIONS
    from dynprune.compress.sparsity import METHODS

    p = sub.add_parser("compress", help="static compression baselines: layer removal, sparsity, quantisation")
    csub = p.add_subparsers(dest="compress_command", required=True)

    t = csub.add_parser("layers", help="remove decoder layers (last / ShortGPT / Gromov angular), heal with LoRA")
    _common(t)
    t.add_argument("--select", choices=SELECTIONS, default="block_influence", help="which layers to remove")
    t.add_argument("--k", type=int, default=1, help="layers to remove")
    t.add_argument("--heal", choices=("none", "ce", "kd"), default="none",
                   help="LoRA healing loss: next-token CE or KL to the full model's logits")
    _training(t, steps=200, lr=2e-4)
    t.set_defaults(fn=cmd_layers)

    t = csub.add_parser("distill", help="train a layer-removed student on the teacher's logits (KL + CE)")
    _common(t)
    t.add_argument("--select", choices=SELECTIONS, default="block_influence", help="which layers the student drops")
    t.add_argument("--k", type=int, default=1, help="layers the student drops")
    t.add_argument("--kd-weight", type=float, default=0.5, help="weight of the KL term (the rest is CE)")
    _training(t, steps=200, lr=5e-5)
    t.set_defaults(fn=cmd_distill)

    t = csub.add_parser("sparsify", help="magnitude / Wanda / 2:4 weight pruning")
    _common(t)
    t.add_argument("--method", choices=METHODS, default="wanda")
    t.add_argument("--sparsity", type=float, default=0.5, help="fraction of each row zeroed, in [0, 1)")
    t.set_defaults(fn=cmd_sparsify)

    t = csub.add_parser("quantize", help="FP16 / BF16 / dynamic INT8 (CPU) / NF4 (CUDA + bitsandbytes)")
    _common(t)
    t.add_argument("--format", choices=FORMATS, required=True)
    t.set_defaults(fn=cmd_quantize)

    t = csub.add_parser("eval", help="re-evaluate a compressed folder against its source; rewrite eval.json")
    t.add_argument("folder")
    t.add_argument("--source", default=None, help="source model spec (default: the one in the metadata)")
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, default=None)
    _common(t, model=False)
    t.set_defaults(fn=cmd_eval)
