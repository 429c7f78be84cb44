"""``dynprune adapters ...``: train bottleneck adapters from the command line.

``dynprune adapters train --model M --out FILE`` distils every decoder layer of ``M``
into a bottleneck adapter (:func:`dynprune.adapters.train_adapters`) and writes:

- ``FILE``: the adapters (safetensors, keyed by the model's identity);
- ``FILE`` with suffix ``.mse.json``: the :class:`~dynprune.adapters.AdapterReport`;
- ``FILE`` with suffix ``.mse.png``: per-layer held-out MSE, skipping vs adapter.

It refuses to overwrite any of them without ``--force``. ``add_adapter_commands(sub)``
registers the command on the ``dynprune`` parser's sub-parsers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynprune.cli_common import add_model_args, comma_separated, load_model_from_args


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """The adapters file and its report and plot: ``a.safetensors`` -> ``a.mse.json``, ``a.mse.png``."""
    out = Path(out)
    return out, out.with_suffix(".mse.json"), out.with_suffix(".mse.png")


def cmd_adapters_train(args: argparse.Namespace) -> int:
    """Train adapters for a model; write the adapters file, its MSE report and plot; print the table."""
    from dynprune.adapter_files import save_adapters
    from dynprune.adapter_training import AdapterConfig, plot_adapter_mse, train_adapters

    paths = output_paths(args.out)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not args.force:
        raise ValueError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    # Check the settings before loading the model.
    config = AdapterConfig(
        bottleneck=args.bottleneck,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        n_prompts=args.n_prompts,
        seq_len=args.seq_len,
        layers=args.layers,
        weight_decay=args.weight_decay,
        seed=args.seed,
        only_correct=args.only_correct,
        max_new_tokens=args.max_new_tokens,
    )
    prompts = None
    source = args.prompts or ("dynprune" if args.only_correct else None)
    if source is not None:
        from dynprune.tasks import load_prompts

        prompts = load_prompts(source, split="train")
    lm = load_model_from_args(args)
    print(f"model: {lm}")
    what = f"prompts from {source!r}" + (" answered correctly" if args.only_correct else "") if prompts else "texts"
    print(
        f"training {config.bottleneck}-wide adapters on {what}: {config.n_prompts} x {config.seq_len} tokens, "
        f"{config.epochs} epochs ...",
        flush=True,
    )
    report = train_adapters(lm, config=config, prompts=prompts)
    save_adapters(report.adapters, paths[0], lm.model_id, report.bottleneck)
    paths[1].write_text(report.to_json() + "\n")
    plot_adapter_mse(report, paths[2])
    print(f"{'layer':>5}  {'skip MSE':>12}  {'adapter MSE':>12}  {'ratio':>6}")
    for layer, ident, trained, ratio in zip(
        report.layers, report.mse_identity, report.mse_trained, report.mse_ratio, strict=True
    ):
        print(f"{layer:>5}  {ident:>12.5g}  {trained:>12.5g}  {ratio:>6.3f}")
    print(
        f"{report.n_windows} training + {report.n_heldout} held-out windows from {report.n_sources} "
        f"{report.source}, {report.steps} steps, {report.seconds:.1f} s"
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def add_adapter_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``adapters train`` to the ``dynprune`` sub-parsers."""
    from dynprune.adapters import DEFAULT_BOTTLENECK

    p = sub.add_parser("adapters", help="train bottleneck adapters that stand in for decoder layers")
    asub = p.add_subparsers(dest="adapters_command", required=True)
    t = asub.add_parser("train", help="distil every decoder layer into a bottleneck adapter (MSE to its output)")
    add_model_args(t)
    t.add_argument("--out", required=True, help="adapters file (.safetensors); .mse.json and .mse.png go beside it")
    t.add_argument("--bottleneck", type=int, default=DEFAULT_BOTTLENECK, help="bottleneck width")
    t.add_argument("--epochs", type=int, default=4, help="passes over the training windows")
    t.add_argument("--n-prompts", type=int, default=64, help="calibration windows (training + held-out)")
    t.add_argument("--seq-len", type=int, default=128, help="tokens per window")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--batch-size", type=int, default=8, help="windows per recorded forward pass")
    t.add_argument("--batch-tokens", type=int, default=256, help="tokens per optimisation step")
    t.add_argument("--layers", type=comma_separated(int, "layer indices", "1,2,5"), default=None,
                   help="comma-separated layers (default: all)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--prompts",
        default=None,
        help="train on prompts + the full model's answers from this source (dynprune, bfcl:simple, a file); "
        "default: plain calibration texts",
    )
    t.add_argument(
        "--only-correct",
        action="store_true",
        help="train only on prompts the full model answers correctly (default source: dynprune)",
    )
    t.add_argument("--max-new-tokens", type=int, default=32, help="length of the full model's answers to prompts")
    t.add_argument("--force", action="store_true", help="overwrite existing output files")
    t.set_defaults(fn=cmd_adapters_train)
