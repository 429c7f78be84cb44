"""``dynprune heal``: train plan-conditional healing for a model from the command line.

``dynprune heal --model M --out DIR`` distils the original ``M`` into LoRA adapters that run only
under pruned plans of the action table (:func:`dynprune.healing_train.train_healing`) and writes
the folder ``DIR`` (``healing.json`` + ``lora.safetensors``), whole or not at all. A stopped run
(Ctrl-C, a crash, ``--time-budget-s``) resumes when the same command is given again; ``--fresh``
starts over. Serve it with ``gym.make("DynPrune-v0", healing=DIR)`` or
``dynprune.healing.attach_healing(lm, DIR)``. ``add_heal_command(sub)`` registers the command.
"""

from __future__ import annotations

import argparse

from dynprune.cli_common import add_model_args, comma_separated, load_model_from_args


def cmd_heal(args: argparse.Namespace) -> int:
    """Train healing for a model; write the folder; print the validation table."""
    from dynprune.healing import PROJECTIONS, HealingConfig
    from dynprune.healing_train import HealTrainConfig, train_healing

    # check the settings before loading the model
    healing_config = HealingConfig(
        grouping=args.grouping, rank=args.rank, alpha=args.alpha, placement=args.placement,
        targets=tuple(args.targets.split(",")) if args.targets else PROJECTIONS,
    )
    config = HealTrainConfig(
        prompts=args.prompts, max_new_tokens=args.max_new_tokens, sampled=args.sampled, top_k=args.top_k,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
        val_fraction=args.val_fraction, warmup=args.warmup,
        time_budget_s=args.time_budget_s, kind_weights=args.kind_weights, extra_layer_ks=args.extra_layer_ks,
        seed=args.seed, save_dtype=args.save_dtype, init=args.init,
    )
    lm = load_model_from_args(args, calibrate=True)
    print(f"model: {lm}", flush=True)
    healing, report = train_healing(lm, args.out, config, healing_config, force=args.force, fresh=args.fresh)
    first, last = report.validations[0], report.validations[-1]
    print(f"\n{'plan':<14}{'val KL before':>14}{'val KL last':>12}{'agree before':>13}{'agree last':>11}")
    for name, v in last["plans"].items():
        b = first["plans"][name]
        print(f"{name:<14}{b['kl']:>14.3f}{v['kl']:>12.3f}{b['agreement']:>13.3f}{v['agreement']:>11.3f}")
    print(f"\n{report.steps} steps ({report.stopped}) in {report.seconds:.0f} s + {report.data_seconds:.0f} s of data, "
          f"{report.threads} threads, load average {report.load_average[0]:.1f} -> {report.load_average[1]:.1f}")
    print("kept: " + ", ".join(f"{g} from step {s} (val KL {report.best_val_kl[g]:.3f})"
                               for g, s in report.best_step.items()))
    print(f"wrote {args.out} ({healing.name}@{healing.fingerprint}, groups {', '.join(healing.info.trained_groups)})")
    return 0


def add_heal_command(sub: argparse._SubParsersAction) -> None:
    """Add ``heal`` to the ``dynprune`` sub-parsers."""

    p = sub.add_parser("heal", help="train LoRA healing that runs only under pruned plans (the full model untouched)")
    add_model_args(p)
    p.add_argument("--out", required=True, help="healing folder to write (healing.json + lora.safetensors)")
    p.add_argument("--grouping", default="shared", choices=("shared", "kind"),
                   help="one LoRA shared by every pruned plan, or one per kind of plan (layers / heads / ffn)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (update scale alpha / rank)")
    p.add_argument("--placement", default="all", choices=("all", "cut"),
                   help="LoRA on every running layer, or only next to the cut (and on sliced layers)")
    p.add_argument("--targets", default=None, help="comma-separated projections with LoRA (default: all seven)")
    p.add_argument("--prompts", default="dynprune", help="prompt source; its train split is used")
    p.add_argument("--max-new-tokens", type=int, default=32, help="length of the original's answers")
    p.add_argument("--sampled", type=int, default=1, help="sampled answers per prompt beside the greedy one")
    p.add_argument("--top-k", type=int, default=64, help="original's log-probabilities kept per position")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--eval-every", type=int, default=25, help="steps between validations and checkpoints")
    p.add_argument("--val-fraction", type=float, default=0.125, help="share of the train split held out to validate")
    p.add_argument("--warmup", type=int, default=10, help="learning-rate warm-up steps")
    p.add_argument("--time-budget-s", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--kind-weights", type=comma_separated(float, "numbers", "2,1,1"), default=(2.0, 1.0, 1.0),
                   help="relative frequency of layers,heads,ffn plans in the steps")
    p.add_argument("--extra-layer-ks", type=comma_separated(int, "integers", "1,4,6"), default=(),
                   help="layer counts trained beside the table's, e.g. 1,4,6,7,9")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="precision of the stored LoRA weights (float16 halves the folder)")
    p.add_argument("--init", default=None,
                   help="start from this healing folder's weights (same model and healing settings): train it further")
    p.add_argument("--force", action="store_true", help="replace an existing healing folder")
    p.add_argument("--fresh", action="store_true", help="discard a stopped run's checkpoint instead of resuming")
    p.set_defaults(fn=cmd_heal)
