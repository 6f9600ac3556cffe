"""Deterministic scatter-sum, shared by the methods that merge tokens (ToMe, SparseVLM's recycling).

``scatter_reduce(..., "sum")`` / ``scatter_add`` add colliding sources (several sources into one destination)
with atomics on CUDA, in an order that changes from run to run, so merged tokens, and so answers, are not
reproducible on a GPU. :func:`scatter_sum_in_order` adds the sources of each destination in index order,
one round per repeat of a destination: within a round no two sources share a destination, so every device
computes the same sums, equal bit for bit to the CPU's sequential accumulation (tested).
"""
from __future__ import annotations

import torch


def repeat_rank(index: torch.Tensor) -> torch.Tensor:
    """index: (B, S) destinations -> (B, S) how many earlier sources (lower position) of the row share each
    source's destination: 0 for the first source of a destination, 1 for the second, ..."""
    batch, sources = index.shape
    ordered, perm = torch.sort(index, dim=1, stable=True)  # destination groups, sources in index order
    position = torch.arange(sources, device=index.device).expand(batch, -1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group_start = torch.where(starts, position, torch.zeros_like(position)).cummax(dim=1).values
    return torch.empty_like(index).scatter_(1, perm, position - group_start)


def scatter_sum_in_order(base: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``base.scatter_reduce(1, index[..., None].expand_as(src), src, "sum", include_self=True)`` computed
    deterministically: base (B, T, D), index (B, S) destination slots in 0..T-1, src (B, S, D). Sources of one
    destination are added in index order. One host sync (the number of rounds)."""
    if index.shape[1] == 0:
        return base
    batch, slots, width = base.shape
    rank = repeat_rank(index)
    rounds = int(rank.max()) + 1
    out = torch.cat([base, base.new_zeros(batch, 1, width)], dim=1)  # slot T: where a round's other sources go
    for r in range(rounds):
        this_round = rank == r
        target = torch.where(this_round, index, torch.full_like(index, slots))
        # destinations of a round are distinct, except the spare slot, which is dropped
        out = out.scatter_add(1, target[..., None].expand(-1, -1, width), src * this_round[..., None].to(src.dtype))
    return out[:, :slots]
