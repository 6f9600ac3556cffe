"""ToMe: Token Merging inside the CLIP vision tower (Bolya et al., ICLR 2023).

Reference: facebookresearch/ToMe, ``tome/merge.py`` (``bipartite_soft_matching``, ``merge_wavg``),
``tome/patch/timm.py`` (``ToMeBlock``, ``ToMeAttention``), ``tome/utils.py`` (``parse_r``). Training-free.

What runs, in every vision layer that LLaVA uses (layers 0 .. the layer producing ``hidden_states[-2]``,
i.e. 0..22 on CLIP-L/336; the last layer is never run because LLaVA does not read it):

1. ``x = x + attn(layer_norm1(x))`` with **proportional attention**: ``log(size)`` of every key token is
   added to the attention logits (ToMe's ``prop_attn``; sizes are 1 before the first merge, so the first
   layer is CLIP's own attention). It runs through CLIP's own ``self_attn`` (SDPA stays on): the log-sizes
   go in as an additive float attention mask of shape (B, 1, 1, T).
2. If the layer's ``r > 0``: **bipartite soft matching** on the metric = the layer's key states (``k_proj``
   output, unscaled) averaged over heads, L2-normalised. Tokens alternate A (even positions) / B (odd
   positions) of the *current* sequence; the CLS token (position 0, in A) is protected (its scores are
   -inf); every A token's best cosine match in B; the r A tokens with the highest best-match score are
   merged into their B match; ``r`` never exceeds 50% (``(T - 1) // 2``). Merging is size-weighted
   (``merge_wavg``): ``x_dst = (sum of size * x) / (sum of size)``, sizes are summed and carried forward.
   New order as ToMe: ``cat([unmerged A tokens sorted by position (CLS first), all B tokens])`` -- not
   raster order.
3. ``x = x + mlp(layer_norm2(x))``.

LLaVA then drops the CLS token: the LLM sees the ``budget`` merged patch tokens in ToMe's order.

Merge schedule (**Decision**, no official LLaVA config exists): ToMe merges a fixed ``r`` per layer; an even
schedule cannot reach small budgets (the 50% cap stalls it near 20 tokens), so by default we use ToMe's
``parse_r(r, inflect)`` linear schedule with a negative inflection (decreasing: more merges early), with
``r = (576 - budget) / 23`` and the exact total:

* target of layer i: ``r * (1 - inflect) + 2 * r * inflect * i / (M - 1)`` (M = merge layers, 23);
* integers: floor of every target, then +1 to the first layers until the sum is exactly ``576 - budget``
  (keeps the schedule non-increasing);
* the 50% cap (``r_i <= n_i // 2`` for the n_i patch tokens entering layer i, i.e. ``r_i <= tokens left
  after layer i``): a forward pass moves what exceeds a layer's cap to the next layer, then a backward pass
  moves what the last layers cannot take to earlier layers. This reaches every budget the tower can reach
  at all (exhaustively checked for 1..23 layers); any other budget raises UserError.

With the default ``inflect = -0.4`` on CLIP-L (576 patches, 23 merge layers):

* 192: 24 23 23 22 21 21 20 20 19 18 18 16 16 15 14 14 13 13 12 11 11 10 10
* 128: 28 27 26 26 25 24 24 23 22 21 21 19 18 18 17 16 15 15 14 13 13 12 11
* 64:  32 31 30 29 28 28 27 26 25 24 24 22 21 20 19 19 18 17 16 15 14 14 13
* 32:  34 33 32 31 30 29 28 28 27 26 25 23 22 21 21 20 19 18 17 16 15 15 14
* 16:  35 34 33 32 31 30 29 28 28 27 25 24 23 22 21 20 19 19 18 17 16 15 14 ``inflect = -1`` is ToMe's paper "decreasing schedule" (2r down to 0),
``inflect = 0`` the constant one. ``schedule`` (a list of per-layer r, padded with zeros) overrides it and must
sum to 576 - budget.

The schedule actually used is recorded per image as ``tome_schedule`` (predictions.jsonl) and kept as the
attribute ``schedule`` (list of ints) for metrics; each output token's size (how many patches it holds) is
recorded as ``merged_sizes`` (sums to 576 over an image's tokens), and each patch's output token (0..budget-1, the
merge group it ended in) as ``merge_groups`` (576 per image).

Where we differ from the reference on purpose:
- the edge ordering uses a stable sort (ties: lower A position first); ToMe's ``argsort`` is unstable;
- merging runs in float32 (sizes reach ~40 and ``size * x`` can lose precision in fp16) and is cast back;
- the sums of the merge (ToMe's ``scatter_reduce(..., "sum")``) add the A tokens of one B token in index order
  (``baselines/_scatter.py``): CUDA's scatter adds them in a changing order; on the CPU the result is the same
  bit for bit.

ModelTC/llmc (LightCompress) at 05eedff, ``llmc/compression/token_reduction/tome.py`` (read, not run): the
reference ToMe (bipartite soft matching on head-mean keys, CLS protected, size-weighted merge, proportional
attention) with ToMe's own constant ``r`` per layer (its config: ``r: 16``, or ``(start, step)``); it has no budget
schedule. The merge step is the same; the per-layer r differ (here the decreasing schedule reaching ``budget`` by
layer 22 described above), so llmc's ToMe rows are not at our budgets.
"""
from __future__ import annotations

import math

import torch

from svdprune.errors import UserError
from svdprune.params import Flag, IntList, Number
from svdprune.pruning import EncoderPruner, register

from ._encoder_common import (LLAVA15_PATCHES, check_budget, check_runtime_budget, embed_patches, producing_layer,
                              split_heads, vision_layers)
from ._scatter import scatter_sum_in_order

NAME = "tome"
LLAVA15_MERGE_LAYERS = 23  # layers 0..22 produce hidden_states[-2] of the 24-layer CLIP-L


# ---------------------------------------------------------------------------------------------- schedule

def decreasing_schedule(num_patches: int, budget: int, num_layers: int, inflect: float = -0.4) -> list[int]:
    """Per-layer merge counts summing to ``num_patches - budget`` (see module docstring).

    Raises ValueError when the 50% cap makes the budget unreachable in ``num_layers`` layers.
    """
    total = num_patches - budget
    if num_layers == 1:
        targets = [float(total)]
    else:
        mean = total / num_layers
        first, last = mean * (1.0 - inflect), mean * (1.0 + inflect)
        targets = [first + (last - first) * i / (num_layers - 1) for i in range(num_layers)]
    schedule = [max(0, math.floor(t + 1e-9)) for t in targets]
    short = total - sum(schedule)
    i = 0
    while short > 0:  # +1 to the earliest layers (keeps a decreasing schedule non-increasing)
        schedule[i % num_layers] += 1
        short -= 1
        i += 1
    while short < 0:  # only if the 1e-9 guard rounded a target up: take from the latest layers
        j = max(k for k in range(num_layers) if schedule[k] > 0)
        schedule[j] -= 1
        short += 1
    return enforce_cap(schedule, budget)


def enforce_cap(schedule: list[int], budget: int) -> list[int]:
    """Apply ToMe's 50% cap (r <= (T - 1) // 2 with CLS protected) while keeping the total.

    With n patch tokens entering a layer, r <= n // 2 is the same as r <= n - r: a layer may merge at most
    as many tokens as remain after it. A forward pass moves what exceeds a layer's cap to the next layer;
    a backward pass then moves what the last layers cannot take to earlier layers.
    """
    out = list(schedule)
    tokens = budget + sum(out)
    for i in range(len(out)):  # forward: r_i <= n_i // 2, excess to the next layer
        cap = tokens // 2
        if out[i] > cap and i + 1 < len(out):
            out[i + 1] += out[i] - cap
            out[i] = cap
        tokens -= out[i]
    excess, after = 0, budget  # backward: ``after`` = patch tokens left after the current layer
    for i in reversed(range(len(out))):
        out[i] += excess
        excess = max(0, out[i] - after)
        out[i] -= excess
        after += out[i]
    if excess:
        raise ValueError(f"cannot merge down to {budget} tokens in {len(out)} layers (50% per layer at most)")
    return out


def check_schedule(schedule: list[int], num_patches: int, budget: int) -> None:
    if sum(schedule) != num_patches - budget:
        raise ValueError(f"schedule sums to {sum(schedule)}, needs {num_patches - budget} "
                         f"({num_patches} patches - budget {budget})")
    tokens = num_patches
    for i, r in enumerate(schedule):
        if r < 0 or r > tokens // 2:
            raise ValueError(f"schedule[{i}]={r} exceeds 50% of the {tokens} patch tokens entering layer {i}")
        tokens -= r


# ------------------------------------------------------------------------------------------------ merging

def bipartite_soft_matching(metric: torch.Tensor, r: int, protect_cls: bool = True):
    """Plan one ToMe merge. metric: (B, T, C). Returns (unmerged A idx (B, a-r), src A idx (B, r), dst B idx (B, r)).

    A = positions 0, 2, 4, ...; B = positions 1, 3, 5, ... (indices are within A resp. B).
    """
    metric = metric.float()
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)  # (B, |A|, |B|) cosine similarity
    if protect_cls:
        scores[:, 0, :] = -math.inf
    node_max, node_idx = scores.max(dim=-1)  # best B match of every A token (first max on ties)
    edge_order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices  # (B, |A|)
    src = edge_order[:, :r]
    unmerged = edge_order[:, r:]
    if protect_cls:
        unmerged = torch.sort(unmerged, dim=-1).values  # CLS back to the front, A tokens by position
    dst = torch.gather(node_idx, 1, src)
    return unmerged, src, dst


def merge_weighted(x: torch.Tensor, size: torch.Tensor, plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge (ToMe's ``merge_wavg``). x: (B, T, D), size: (B, T, 1) -> merged x and sizes.

    Output order: ``cat([unmerged A, B])``; every B token becomes (sum size*x)/(sum size) over itself and
    the A tokens merged into it.
    """
    unmerged, src, dst = plan

    def merge_sum(t: torch.Tensor) -> torch.Tensor:
        a, b = t[:, ::2], t[:, 1::2]
        width = t.shape[-1]
        kept = torch.gather(a, 1, unmerged[..., None].expand(-1, -1, width))
        moved = torch.gather(a, 1, src[..., None].expand(-1, -1, width))
        b = scatter_sum_in_order(b, dst, moved)  # scatter_reduce "sum", deterministic on every device
        return torch.cat([kept, b], dim=1)

    weighted = merge_sum(x.float() * size)
    new_size = merge_sum(size)
    return (weighted / new_size).to(x.dtype), new_size


def merged_positions(plan, tokens: int) -> torch.Tensor:
    """Where each of the ``tokens`` current tokens goes in ``merge_weighted``'s output: (B, tokens) long.
    Unmerged A tokens keep their rank among the unmerged, src A tokens go to their dst B token, B tokens follow
    the unmerged ones. Bookkeeping only (merge groups for the record), no effect on the merge."""
    unmerged, src, dst = plan
    batch, kept = unmerged.shape
    a_pos = torch.empty(batch, (tokens + 1) // 2, dtype=torch.long, device=unmerged.device)
    a_pos.scatter_(1, unmerged, torch.arange(kept, device=unmerged.device).expand(batch, -1))
    a_pos.scatter_(1, src, kept + dst)
    out = torch.empty(batch, tokens, dtype=torch.long, device=unmerged.device)
    out[:, ::2] = a_pos
    out[:, 1::2] = kept + torch.arange(tokens // 2, device=unmerged.device)
    return out


# ------------------------------------------------------------------------------------------------- method

@register
class ToMe(EncoderPruner):
    """Token merging inside the CLIP vision tower down to exactly ``budget`` patch tokens."""

    name, label, in_paper, table_row = "tome", "ToMe", True, 10
    needs = frozenset({"vision_layers"})
    reaches_all = True

    kind = "encoder"

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"inflect": Number(-1, 1, default=-0.4), "schedule": IntList(low=0, nullable=True, default=None),
              "prop_attn": Flag(default=True)}

    def __init__(self, budget: int, inflect: float = -0.4, schedule: list[int] | None = None,
                 prop_attn: bool = True):
        self.budget = check_budget(NAME, budget)
        if isinstance(inflect, bool) or not isinstance(inflect, (int, float)) or not -1 <= inflect <= 1:
            raise UserError(f"{NAME}: method.params.inflect={inflect!r}; allowed: a number in [-1, 1] "
                            "(-1 = ToMe's decreasing schedule, 0 = constant)")
        if not isinstance(prop_attn, bool):
            raise UserError(f"{NAME}: method.params.prop_attn={prop_attn!r}; allowed: true, false")
        if schedule is not None:
            if not isinstance(schedule, (list, tuple)) or not all(
                    isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in schedule):
                raise UserError(f"{NAME}: method.params.schedule={schedule!r}; allowed: null or a list of "
                                "non-negative integers (tokens merged per layer)")
            schedule = list(schedule)
        self.inflect = float(inflect)
        self.prop_attn = prop_attn
        self.fixed_schedule = schedule
        try:  # validate against LLaVA-1.5's geometry now; the real tower is checked again in encode
            self.schedule = self.schedule_for(LLAVA15_PATCHES, LLAVA15_MERGE_LAYERS)
        except ValueError as exc:
            raise UserError(f"{NAME}: budget={budget}: {exc}") from None

    def schedule_for(self, num_patches: int, num_layers: int) -> list[int]:
        if self.fixed_schedule is not None:
            if len(self.fixed_schedule) > num_layers:
                raise ValueError(f"schedule has {len(self.fixed_schedule)} entries for {num_layers} merge layers")
            schedule = self.fixed_schedule + [0] * (num_layers - len(self.fixed_schedule))
        else:
            schedule = decreasing_schedule(num_patches, self.budget, num_layers, self.inflect)
        check_schedule(schedule, num_patches, self.budget)
        return schedule

    def describe(self) -> dict:
        return {"merge_schedule": list(self.schedule)}

    def check(self, lm) -> None:
        """The schedule must reach the budget in the loaded tower's layers (50% cap per layer)."""
        merge_layers = producing_layer(lm.feature_layer, len(vision_layers(lm.vision_tower))) + 1
        check_runtime_budget(NAME, self.budget, lm.num_patches)
        try:
            self.schedule = self.schedule_for(lm.num_patches, merge_layers)
        except ValueError as exc:
            raise UserError(f"{NAME}: budget={self.budget} with this vision tower: {exc}") from None

    @torch.no_grad()
    def encode(self, vision_tower, pixel_values, feature_layer, context):
        layers = vision_layers(vision_tower)
        last = producing_layer(feature_layer, len(layers))
        hidden = embed_patches(vision_tower, pixel_values)  # (B, 1 + N, D)
        batch, tokens = hidden.shape[:2]
        num_patches = tokens - 1
        check_runtime_budget(NAME, self.budget, num_patches)
        try:
            schedule = self.schedule_for(num_patches, last + 1)
        except ValueError as exc:
            raise UserError(f"{NAME}: budget={self.budget} with this vision tower: {exc}") from None
        self.schedule = schedule

        size = None  # (B, T, 1) float32, patches held by each token; None = all ones
        owner = torch.arange(tokens, device=hidden.device).expand(batch, -1)  # (B, 1 + N): token of each input
        states = [hidden]
        for layer, r in zip(layers[:last + 1], schedule):
            width = hidden.shape[1]
            hidden, size, plan = self.layer_forward(layer, hidden, size, r)
            if plan is not None:
                owner = merged_positions(plan, width).gather(1, owner)
            states.append(hidden)
        if size is None:
            size = torch.ones(batch, hidden.shape[1], 1, device=hidden.device)
        context.vision_hidden_states = tuple(states)  # lengths shrink layer by layer
        context.record(tome_schedule=[list(schedule)] * batch,
                       merged_sizes=size[:, 1:, 0].round().long().tolist(),
                       merge_groups=(owner[:, 1:] - 1).tolist())
        return hidden[:, 1:]

    def layer_forward(self, layer, hidden: torch.Tensor, size: torch.Tensor | None, r: int):
        """One CLIPEncoderLayer with proportional attention and a ToMe merge between attention and MLP.
        Returns (hidden, size, the merge plan or None when r = 0)."""
        attn = layer.self_attn
        captured = {}
        handle = attn.k_proj.register_forward_hook(lambda module, args, output: captured.setdefault("k", output))
        try:
            bias = None
            if self.prop_attn and size is not None:
                bias = size.log()[:, None, None, :, 0].to(hidden.dtype)  # (B, 1, 1, T), added to the logits
            attn_out, _ = attn(hidden_states=layer.layer_norm1(hidden), attention_mask=bias)
        finally:
            handle.remove()
        hidden = hidden + attn_out
        plan = None
        if r > 0:
            metric = split_heads(captured["k"], attn.num_heads).mean(dim=1)  # (B, T, head_dim)
            if size is None:
                size = torch.ones(hidden.shape[0], hidden.shape[1], 1, device=hidden.device)
            plan = bipartite_soft_matching(metric, r, protect_cls=True)
            hidden, size = merge_weighted(hidden, size, plan)
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        return hidden, size, plan

    def reduce(self, features, context):
        """The merging already happened in ``encode``: ``features`` are the ``budget`` merged tokens."""
        if features.shape[1] != self.budget:
            raise ValueError(f"ToMe.reduce expects the {self.budget} tokens of ToMe.encode, got {features.shape[1]}")
        return features
