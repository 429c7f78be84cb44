"""The thesis' router: a prompt encoder, a layer-scoring head and a pruning-ratio head.

- :mod:`agents.router.model`: :class:`SentenceEncoder` (all-MiniLM-L6-v2, cached per prompt),
  :class:`RouterConfig`, :class:`Router`, :func:`load_router`;
- :mod:`agents.router.topk`: differentiable top-k (Sinkhorn, Gumbel);
- :mod:`agents.router.losses`: FBC, DPO, ORPO;
- :mod:`agents.router.configs`, :mod:`agents.router.data`, :mod:`agents.router.train`: the training
  settings (a config dataclass per method), the data (logs and preference pairs), the training loop;
- :mod:`agents.router.agent`: :class:`RouterAgent` (DynPruneLayers-v0 masks, DynPrune-v0 nearest entry);
- :mod:`agents.router.cli`: ``dynprune router train``.

The agent kind ``"router"`` is registered by :mod:`agents` itself, so ``load_agent`` finds a
saved router without importing this package first.
"""
