"""A small GPT-style decoder-only language model (after karpathy/nanoGPT `model.py`), with a KV cache (litgpt).

One `GPT.forward` serves both users: the trainer calls it on whole sequences (causal attention, optional loss);
generation passes a `KVCache` and the positions at which its tokens start, and attention then runs over the keys
and values cached for each row so far plus the new ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from tinygpt.config import GPTConfig


class KVCache:
    """Keys and values of every layer for `slots` rows of up to `block_size` tokens each.

    Row `r` of a cached forward uses slot `slots[r]` (slot `r` when no slots are given); its tokens are written at
    positions `input_pos[r], input_pos[r] + 1, ...`, and they attend to every cached position of that slot up to
    their own. Entries beyond a row's newest position are never attended to, so they may hold anything (padding).
    """

    def __init__(
        self, config: GPTConfig, slots: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> None:
        shape = (slots, config.n_head, config.block_size, config.head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.slots = slots
        self.block_size = config.block_size

    def move(self, source: int, target: int) -> None:
        """Copy slot `source` into slot `target` (a batch keeping its rows contiguous)."""
        for cache in (*self.keys, *self.values):
            cache[target].copy_(cache[source])


class _CachedStep:
    """How one cached forward pass reads and writes the cache: the same for every layer."""

    def __init__(self, cache: KVCache, positions: torch.Tensor, slots: torch.Tensor | None, *, fresh: bool) -> None:
        batch = positions.shape[0]
        self.cache = cache
        self.positions = positions  # (B, T) position of every new token
        self.write_rows = (slots if slots is not None else torch.arange(batch, device=positions.device))[:, None]
        # Rows starting at position 0 attend only to their new tokens: plain causal attention, nothing to read back.
        self.fresh = fresh
        self.span = positions.shape[1] if fresh else int(positions.max()) + 1
        # Without explicit slots, rows are slots [0, B): a view of the cache, no copy.
        self.read_rows = slots if slots is not None else slice(0, batch)
        key_pos = torch.arange(self.span, device=positions.device)
        self.mask = None if fresh else (key_pos <= positions[..., None])[:, None]  # (B, 1, T, span)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.cache.keys[layer][self.write_rows, :, self.positions] = k.transpose(1, 2)
        self.cache.values[layer][self.write_rows, :, self.positions] = v.transpose(1, 2)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.write(layer, k, v)
        if self.fresh:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        return F.scaled_dot_product_attention(
            q, keys[self.read_rows, :, : self.span], values[self.read_rows, :, : self.span], attn_mask=self.mask
        )


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, step: _CachedStep | None = None, *, output: bool = True) -> torch.Tensor | None:
        """Attention output for `x` (B, T, C); with `output=False` only the cache is written and None returned."""
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        shape = (b, t, self.n_head, c // self.n_head)
        q, k, v = q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)
        if step is not None and not output:
            step.write(self.layer, k, v)
            return None
        if step is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:
            y = step.attend(self.layer, q, k, v)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, step: _CachedStep | None = None, *, output: bool = True) -> torch.Tensor:
        attended = self.attn(self.ln_1(x), step, output=output)
        if attended is None:
            return x
        x = x + attended
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token and position embeddings, `n_layer` pre-norm blocks, a final LayerNorm and an output head.

    The head is not tied to the token embedding (GPT-2 ties them): with a character vocabulary of ~100 the head
    costs a few thousand parameters, and untying it lowered the benchmark recipe's validation loss at step 2000
    from 1.906 to 1.882 (docs/benchmarks.md)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("GPTConfig.vocab_size is unset; build the model from config.with_vocab(...)")
        self.config = config
        self.vocab_size: int = config.vocab_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled residual projections (GPT-2 paper)
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, slots: int) -> KVCache:
        """An empty cache for `slots` rows, on the model's device and in its dtype."""
        weight = self.wte.weight
        return KVCache(self.config, slots, device=weight.device, dtype=weight.dtype)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
        logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for every position of `idx` (B, T); with `targets`, also the mean cross-entropy loss.

        With `cache`, row `r` of `idx` continues the sequence cached in slot `slots[r]` (default `r`) from position
        `input_pos[r]` (default 0): its keys and values are written there and attention sees everything cached
        for that slot before them. Without it, `idx` is a whole sequence starting at position 0.
        `logits=False` (with a cache) only fills the cache: the last block stops once its keys and values are
        written, and no logits are computed (a prefill whose outputs nobody reads).
        """
        b, t = idx.shape
        if cache is None:
            if t > self.config.block_size:
                raise ValueError(f"sequence length {t} exceeds block_size {self.config.block_size}")
            step = None
            pos = torch.arange(t, device=idx.device)
        else:
            start = input_pos if input_pos is not None else torch.zeros(b, dtype=torch.long, device=idx.device)
            pos = start[:, None] + torch.arange(t, device=idx.device)
            step = _CachedStep(cache, pos, slots, fresh=input_pos is None)
            if step.span > self.config.block_size:
                raise ValueError(f"cached positions reach {step.span}, beyond block_size {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(pos))
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            x = block(x, step, output=logits or step is None or layer < last)
        if not logits and step is not None:
            return None, None
        out = self.lm_head(self.ln_f(x))
        if targets is None:
            return out, None
        loss = F.cross_entropy(out.view(-1, out.size(-1)), targets.view(-1))
        return out, loss
