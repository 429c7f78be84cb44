"""The thesis' router: a prompt encoder, a layer-scoring head and a pruning-ratio head.

- :mod:`agents.router.model`: :class:`SentenceEncoder` (all-MiniLM-L6-v2, cached per prompt),
  :class:`RouterConfig`, :class:`Router`, :func:`load_router`;
- :mod:`agents.router.topk`: differentiable top-k (Sinkhorn, Gumbel);
- :mod:`agents.router.losses`: FBC, DPO, ORPO;
- :mod:`agents.router.train`: config dataclasses, data loading, the training loop;
- :mod:`agents.router.agent`: :class:`RouterAgent` (DynPruneLayers-v0 masks, DynPrune-v0 nearest entry);
- :mod:`agents.router.cli`: ``dynprune router train``.

Importing this package registers the agent kind ``"router"`` (and loads no torch).
"""

from agents.base import register_agent

register_agent("router", "agents.router.agent:RouterAgent")
