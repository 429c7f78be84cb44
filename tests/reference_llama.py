"""An independent, from-scratch Llama forward pass used as the reference in tests.

It reads the *unpruned* weights of a transformers Llama and computes logits with
the structure a plan removes left out explicitly: skipped layers are not run,
adapter layers run their module, only the kept query heads are computed (each
reading its own KV head, so ragged GQA groups are exact), only the kept FFN
channels are summed. Plain float64 math, no KV cache, no transformers code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ReferenceLlama:
    """Reference forward over a Llama's original weights with some structure removed."""

    def __init__(self, model: nn.Module) -> None:
        cfg = model.config
        self.eps = cfg.rms_norm_eps
        self.d = cfg.head_dim
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.group = self.n_heads // self.n_kv
        theta = cfg.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.d, 2, dtype=torch.float64) / self.d))
        sd = {k: v.detach().double().cpu().clone() for k, v in model.state_dict().items()}
        self.sd = sd
        self.n_layers = cfg.num_hidden_layers
        self.embed = sd["model.embed_tokens.weight"]
        self.lm_head = sd.get("lm_head.weight", self.embed)

    def logits(
        self,
        ids: Sequence[int],
        skip: Sequence[int] = (),
        adapters: Mapping[int, nn.Module] | None = None,
        kept_heads: Mapping[int, Sequence[int]] | None = None,
        kept_channels: Mapping[int, Sequence[int]] | None = None,
        visible: Callable[[int, int], bool] | None = None,
    ) -> torch.Tensor:
        """Logits ``[seq, vocab]`` of ``ids`` with the given structure removed.

        ``visible(query_pos, key_pos)``, when given, masks out further causal pairs (KV windows).
        """
        adapters = adapters or {}
        kept_heads = kept_heads or {}
        kept_channels = kept_channels or {}
        t = len(ids)
        x = self.embed[torch.tensor(list(ids))]
        pos = torch.arange(t, dtype=torch.float64)
        ang = torch.outer(pos, self.inv_freq)
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        if visible is not None:
            causal &= torch.tensor([[visible(i, j) for j in range(t)] for i in range(t)], dtype=torch.bool)
        for i in range(self.n_layers):
            if i in skip:
                continue
            if i in adapters:
                x = adapters[i](x[None].to(next(adapters[i].parameters()).dtype))[0].double()
                continue
            p = f"model.layers.{i}."
            sd = self.sd
            h = rms_norm(x, sd[p + "input_layernorm.weight"], self.eps)
            wq, wk, wv, wo = (sd[p + f"self_attn.{n}_proj.weight"] for n in "qkvo")
            heads_out = []
            kept = list(kept_heads.get(i, range(self.n_heads)))
            for head in kept:
                g = head // self.group
                q = h @ wq[head * self.d : (head + 1) * self.d].T
                k = h @ wk[g * self.d : (g + 1) * self.d].T
                v = h @ wv[g * self.d : (g + 1) * self.d].T
                q = q * cos + rotate_half(q) * sin
                k = k * cos + rotate_half(k) * sin
                s = (q @ k.T) / self.d**0.5
                s = s.masked_fill(~causal, float("-inf"))
                heads_out.append(torch.softmax(s, -1) @ v)
            cols = torch.cat([torch.arange(hh * self.d, (hh + 1) * self.d) for hh in kept])
            x = x + torch.cat(heads_out, -1) @ wo[:, cols].T
            h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], self.eps)
            ch = torch.tensor(list(kept_channels.get(i, range(sd[p + "mlp.gate_proj.weight"].shape[0]))))
            gate = h @ sd[p + "mlp.gate_proj.weight"][ch].T
            up = h @ sd[p + "mlp.up_proj.weight"][ch].T
            x = x + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"][:, ch].T
        x = rms_norm(x, self.sd["model.norm.weight"], self.eps)
        return x @ self.lm_head.T

    def greedy(
        self, ids: Sequence[int], max_new_tokens: int, eos: set[int], **structure: object
    ) -> list[int]:
        """Greedy decoding by re-running the whole sequence each step (no cache)."""
        seq, out = list(ids), []
        for _ in range(max_new_tokens):
            tok = int(self.logits(seq, **structure)[-1].argmax())
            if tok in eos:
                break
            out.append(tok)
            seq.append(tok)
        return out
