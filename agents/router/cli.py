"""``dynprune router train``: train the router (FBC, DPO, ORPO) from exploration logs and preference pairs.

Examples::

    dynprune explore --strategy dfs --adapters A.safetensors --out logs/dfs
    dynprune explore --strategy random --adapters A.safetensors --out logs/random
    dynprune prefs --logs logs/dfs --out pairs.parquet
    dynprune router train --method fbc --logs logs/dfs logs/random --run-dir runs/router-fbc
    dynprune router train --method dpo --logs logs/dfs logs/random --pairs pairs.parquet \\
        --init runs/router-fbc/router.safetensors --beta 0.1 --run-dir runs/router-dpo
    dynprune router train --method orpo --logs logs/dfs --features tokens --run-dir runs/router-orpo-light

A run directory gets ``config.json``, ``train_log.jsonl`` (train metrics per epoch, held-out
metrics every ``--eval-every`` epochs), ``checkpoint.safetensors`` (at every evaluation),
``router.safetensors`` and a loadable agent (``agent.agent.json`` + ``agent.router.safetensors``;
``RouterAgent.load(run_dir / "agent", env=...)``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dynprune.runfolder import prepare_run_folder

# Literal copies, so building the ``dynprune`` parser does not import torch (a test checks they match).
METHODS = ("fbc", "dpo", "orpo")  # agents.router.configs.METHODS
FEATURES = ("minilm", "tokens")  # agents.router.model.FEATURES
TOPK_METHODS = ("none", "sinkhorn", "gumbel")  # agents.router.topk.TOPK_METHODS
#: What a router run writes (top-level names, glob patterns): ``--force`` deletes these and nothing else.
RUN_OUTPUTS = ("config.json", "train_log.jsonl", "router.safetensors", "checkpoint.safetensors", "agent.agent.json",
               "agent.router.safetensors", "test", "report", ".*.tmp")


def train_command(args: argparse.Namespace) -> int:
    """Train a router from the command line (see the module docstring)."""
    import torch

    from agents.router.agent import RouterAgent
    from agents.router.configs import make_config
    from agents.router.data import load_router_data
    from agents.router.model import Router, RouterConfig, SentenceEncoder, load_router
    from agents.router.train import train_router

    common = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "set_term",
                                             "eval_fraction", "eval_every", "success_threshold", "seed")
              if getattr(args, k) is not None}
    extra: dict[str, Any] = {}
    if args.method == "fbc":
        extra = {"topk": args.topk, "topk_tau": args.topk_tau, "layer_weight": args.layer_weight}
    elif args.beta is not None:
        extra = {"beta": args.beta}
    config = make_config(args.method, **common, **extra)  # validates before any loading
    run_dir = Path(args.run_dir)
    data = load_router_data(args.logs, pairs=args.pairs)
    prepare_run_folder(run_dir, "router", RUN_OUTPUTS, force=args.force)
    features = None
    if args.init is not None:
        router, _ = load_router(args.init, num_layers=data.num_layers)
        if router.config.features != args.features:
            raise ValueError(
                f"--init {args.init} is a {router.config.features!r} router; --features is {args.features!r}"
            )
    elif args.features == "minilm":
        encoder = SentenceEncoder(args.encoder, max_length=args.max_length)
        router = Router(RouterConfig(num_layers=data.num_layers, in_dim=encoder.dim, features="minilm",
                                     encoder=encoder.spec, hidden=args.hidden), encoder=encoder)
    else:
        router = None
    if args.features == "tokens":
        from dynprune.models import load_model

        lm = load_model(args.model, device=args.device)
        if lm.geometry.num_layers != data.num_layers:
            raise ValueError(f"--model {args.model} has {lm.geometry.num_layers} layers; the logs were measured on "
                             f"{data.num_layers}")
        if router is None:
            router = Router(RouterConfig(num_layers=data.num_layers, in_dim=lm.geometry.hidden_size,
                                         features="tokens", encoder=None, hidden=args.hidden))

        def features(texts: list[str]) -> torch.Tensor:
            import numpy as np

            return torch.from_numpy(np.stack([lm.prompt_embedding(t) for t in texts]).astype("float32"))

    assert router is not None
    print(f"[router {args.method}] {len(data.prompt_ids)} prompts, {len(data.pairs)} pairs, "
          f"{data.num_layers} layers, features={router.config.features}", flush=True)
    result = train_router(router, data, config, features=features, run_dir=run_dir, progress=True)
    RouterAgent(result.router).save(run_dir / "agent")
    last = result.history[-1]
    shown = {k: round(v, 4) for k, v in last.items() if k.startswith("eval/")}
    print(f"[router {args.method}] done in {result.seconds:.1f} s: {run_dir / 'router.safetensors'} {shown}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``router train`` to the ``dynprune`` sub-command parser."""
    router = sub.add_parser("router", help="train the layer router (FBC / DPO / ORPO) from exploration logs")
    rsub = router.add_subparsers(dest="router_command", required=True)
    p = rsub.add_parser("train", help="train a router from logged configurations and preference pairs")
    p.add_argument("--method", choices=METHODS, required=True, help="fbc, dpo or orpo")
    p.add_argument("--logs", nargs="+", required=True, help="log folders of dynprune explore (dfs / random)")
    p.add_argument("--pairs", default=None, help="pairs file of dynprune prefs (default: derived from --logs)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--force", action="store_true",
                   help="replace the run in --run-dir: delete the files it wrote (other files stay)")
    p.add_argument("--features", choices=FEATURES, default="minilm",
                   help="minilm: sentence encoder; tokens: the light router on the served model's token embeddings")
    p.add_argument("--encoder", default=None, help="encoder folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, default=None, help="encoder token limit (default: the encoder's)")
    p.add_argument("--model", default="smollm2-135m", help="served model (for --features tokens)")
    p.add_argument("--device", default="auto")
    p.add_argument("--init", default=None, help="start from this router checkpoint (DPO: also the reference)")
    p.add_argument("--hidden", type=int, default=128, help="MLP width")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--beta", type=float, default=None, help="DPO beta / ORPO lambda (default 0.1)")
    p.add_argument("--set-term", choices=("bernoulli", "plackett_luce"), default=None)
    p.add_argument("--topk", choices=TOPK_METHODS, default="none", help="FBC: differentiable top-k of the layer term")
    p.add_argument("--topk-tau", type=float, default=0.1)
    p.add_argument("--layer-weight", type=float, default=1.0, help="FBC: weight of the BCE layer term")
    p.add_argument("--success-threshold", type=float, default=None, help="FBC: score a successful configuration needs")
    p.add_argument("--eval-fraction", type=float, default=None, help="share of prompts held out")
    p.add_argument("--eval-every", type=int, default=None, help="epochs between held-out evaluations")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(fn=train_command)
