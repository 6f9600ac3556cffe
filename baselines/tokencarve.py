"""TokenCarve: information-preserving two-stage visual token compression between LLM layers (Tan et al., 2025).

Reference: ShawnTan86/TokenCarve at a57bd5963b5c9ae05b1b6086765e1c2f85f8ddce, ``TokenCarve/modeling_llama.py``
(``LlamaModel.forward``, the ``layer_idx == Token_carve_work_layer`` branch, lines 1136-1223; the rotary positions
in ``LlamaAttention.forward``, lines 403-417) with the settings of ``TokenCarve/TokenCarve_model_vqa_loader.py``
(lines 99-107 and 164-172: ``--token-carve-work-layer 2``, ``--token-carve-SV-AV-mode 0``,
``--token-carve-SV-AV-weight 0.5``, stage-1 count ``int(T / 2 * 3)``, merges ``int(T / 2)`` for T image tokens).
Training-free.

With K = ``work_layer`` (2) and T = ``budget``, before layer K, per prompt, on the n image tokens:

1. **Attention score (AV)**: layer K-1's post-softmax attention of the last prompt token to each image token,
   averaged over heads (the released code runs eager attention with ``output_attentions=True``; the row is
   recomputed here from that layer's LayerNorm, q/k projections and RoPE, ``attention_rows``).
2. **Information score (SV)**: the SVD ``U S V^T`` of the image tokens' rows of layer K-1's **output** hidden
   states (n, d) in float32; token i scores ``sum_j |U_ij S_j|``, the L1 norm of its row of ``U S``.
3. **Fusion by ranks**: with ``w = sv_av_weight``, the token ranked r-th (r = 0, 1, ...) by attention gets
   ``(n - r) * w`` and the token ranked r-th by information gets ``(n - r) * (1 - w)``, summed (float32).
4. **Stage I (pruning)**: the ``rank = int(T / 2 * 3)`` best fused tokens, best first. Set A = the first
   ``int(rank / 2)`` of them, set B = the rest; all others are dropped.
5. **Stage II (merging)**: cosine similarity of layer K-1's output states, each B token to each A token; the
   ``min(|A|, int(T / 2))`` B tokens with the highest best-similarity are merged into their most similar A token
   (the mean of the A token and all B tokens merged into it, ``scatter_reduce(..., "mean")``), the other B tokens
   stay. T image tokens remain (``rank - int(T / 2)``), in their original order.
6. Layers K.. see the kept tokens with their **original position ids**; the KV caches of layers 0..K-1 are cut to
   the same tokens (the released code slices ``past_key_values`` of layers 0 and 1 to ``keep_indexs``: decoding
   attends to the kept tokens in every layer; the merged A tokens' early-layer KV stay those of the unmerged
   token); decoding continues at positions L, L+1, ... (``keep_index_map``).

Budget: T is what remains after stage II, as in the released loader. Stage I needs ``int(T / 2 * 3)`` image tokens,
so T is at most 384 of LLaVA-1.5's 576 (the released ``topk`` would raise); a larger budget is refused.

Decisions where the released code is ambiguous or where ours differs on purpose:

* The paper says "attention output matrix"; the released code decomposes the layer's output hidden states
  (``layer_outputs[0]``, residual stream after the MLP), and so does this file. Its merge similarity uses them too.
* The released loader sets ``--token-carve-sys-length 36``: image tokens at 36..611. LLaVA-1.5's prompt puts 35
  tokens before the image (FastV's and SparseVLM's released code use 35), so the released default scores the
  first text token after the image ("\\n") as an image token and never prunes image token 0. The image tokens are
  taken from the sequence here (the 576 visual tokens the paper describes), not from the off-by-one offset.
* Batched (the released code reads batch row 0: batch size 1), rows left-padded; everything per row.
* Scores, SVD, similarities and the merge in float32 (released: the attention head mean and the merge in the model
  dtype); the merged states are cast back to the model dtype. The merge sums each A token's sources in merge order
  with a deterministic scatter (released: ``scatter_reduce_`` mean, whose CUDA accumulation order varies).
* Rankings are stable sorts, ties to the lower index. The fused score of step 3 ties often (with w = 0.5 two
  tokens whose two ranks have the same sum tie exactly); the released ``topk`` leaves the order of ties unspecified
  (measured: CPU ``topk`` differs from a stable order in 101 of 140 random cases), so where a tie sits at the
  stage-I cut or at the A/B split the released selection is not defined; ours is.
* SVD ``full_matrices=False`` (released: the default ``True``; U, S are bit-identical for n <= d, and for d < n,
  a tiny model, the released ``U @ diag(S)`` would fail on the shapes; the reduced U is the natural reading).
* ``work_layer`` generalises the released code's layer 2 (its cache slicing hard-codes layers 0 and 1, i.e. K = 2).

The committed fixture ``tests/fixtures/official/tokencarve.json`` holds the released branch's output (kept positions
and merged states) on seeded inputs of LLaVA-1.5-7B's shapes; ``tests/test_methods_2025.py`` requires ours to
equal it wherever the released selection is defined (no tie at a cut).
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError
from svdprune.params import Integer, Number
from svdprune.pruning import DecoderPruner, LayerView, TokenState, register

from ._encoder_common import LLAVA15_PATCHES, check_int
from ._scatter import scatter_sum_in_order
from .attention import attention_rows, check_depth, image_positions, keep_indices, last_token_index

NAME = "tokencarve"


def stage_counts(budget: int) -> tuple[int, int]:
    """(tokens kept by stage I, tokens merged away by stage II) for a budget T: ``int(T / 2 * 3)``, ``int(T / 2)``
    (the released loader; ``T / 2 * 3`` in float, as written)."""
    return int(budget / 2 * 3), int(budget / 2)


def information_scores(image_states: torch.Tensor) -> torch.Tensor:
    """(B, n, d) image-token states -> (B, n) float32: the L1 norm of each token's row of ``U S`` (SVD of the
    float32 states)."""
    u, s, _ = torch.linalg.svd(image_states.float(), full_matrices=False)  # (B, n, r), (B, r)
    return (u * s[:, None, :]).abs().sum(dim=-1)


def descending(scores: torch.Tensor) -> torch.Tensor:
    """(B, n) -> (B, n) indices, highest first, ties to the lower index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def fused_ranks(attention: torch.Tensor, information: torch.Tensor, av_weight: float) -> torch.Tensor:
    """(B, n) attention and information scores -> (B, n) float32 fused rank scores: the token at rank r of the
    attention order gets ``(n - r) * av_weight``, the token at rank r of the information order
    ``(n - r) * (1 - av_weight)``."""
    batch, n = attention.shape
    weighting = torch.arange(n, 0, -1, device=attention.device).expand(batch, -1)  # (B, n) int64: n, n-1, ..., 1
    fused = torch.zeros(batch, n, device=attention.device)
    fused = fused.scatter_add(1, descending(attention.float()), weighting * av_weight)
    return fused.scatter_add(1, descending(information.float()), weighting * (1 - av_weight))


def carve(fused: torch.Tensor, states: torch.Tensor, rank: int,
          merges: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stages I and II for (B, n) fused scores and (B, n, d) image-token states, m = min(rank // 2, merges).

    Returns kept (B, rank - m) image-token indices, ascending; states (B, n, d) in the input dtype, where each A
    token that received merges holds the float32 mean of itself and its merged B tokens; sources (B, m) the B
    tokens merged away and destinations (B, m) the A token each went into."""
    batch, n, width = states.shape
    top = descending(fused)[:, :rank]  # (B, rank), best first
    set_length = int(0.5 * rank)
    set_a, set_b = top[:, :set_length], top[:, set_length:]  # (B, |A|), (B, |B|)
    metric = states.float()
    metric = metric / metric.norm(dim=-1, keepdim=True)
    gather = lambda index: torch.gather(metric, 1, index[..., None].expand(-1, -1, width))  # noqa: E731
    similarity = gather(set_b) @ gather(set_a).transpose(1, 2)  # (B, |B|, |A|)
    best, target = similarity.max(dim=-1)  # (B, |B|)
    merged_count = min(set_length, merges)
    order = descending(best)
    merged, remaining = order[:, :merged_count], order[:, merged_count:]  # positions in B
    sources = set_b.gather(1, merged)  # (B, m) image-token indices merged away
    destinations = set_a.gather(1, target.gather(1, merged))  # (B, m) their A tokens
    values = states.float()
    src = torch.gather(values, 1, sources[..., None].expand(-1, -1, width))
    summed = scatter_sum_in_order(values, destinations, src)  # each destination: itself + sources in merge order
    counts = torch.ones(batch, n, device=states.device).scatter_add(
        1, destinations, torch.ones_like(destinations, dtype=torch.float32))
    mean = (summed / counts[..., None]).to(states.dtype)
    kept = torch.cat([set_a, set_b.gather(1, remaining)], dim=1).sort(dim=1).values
    return kept, mean, sources, destinations


@register
class TokenCarve(DecoderPruner):
    """Prunes to 1.5 T image tokens by fused attention and SVD-information ranks, then merges T / 2 of them into
    the rest, before LLM layer ``work_layer``; earlier layers' KV caches are cut to the same tokens."""

    name, label, in_paper, table_row = "tokencarve", "TokenCarve", False, 170
    needs = frozenset({"fixed_grid"})

    #: the engine cuts the KV caches of the layers before the cut to the tokens the cut keeps (released code)
    cuts_earlier_caches = True

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"work_layer": Integer(1, default=2), "sv_av_weight": Number(0, 1, default=0.5)}

    @classmethod
    def shallow_params(cls, budget: int, n_layers: int) -> dict:
        """A shallow LLM: the cut after layer 0 (work_layer 1)."""
        return {"work_layer": 1}

    def __init__(self, budget: int, work_layer: int = 2, sv_av_weight: float = 0.5):
        limit = LLAVA15_PATCHES * 2 // 3
        self.budget = check_int(NAME, "budget", budget, 1, 576)
        if stage_counts(self.budget)[0] > LLAVA15_PATCHES:
            raise UserError(f"{NAME}: budget {budget} needs int({budget} / 2 * 3) = {stage_counts(self.budget)[0]} "
                            f"image tokens in stage I but LLaVA-1.5 has {LLAVA15_PATCHES}; allowed budgets: 1..{limit}")
        self.work_layer = check_int(NAME, "method.params.work_layer", work_layer, 1)
        if isinstance(sv_av_weight, bool) or not isinstance(sv_av_weight, (int, float)) or not 0 <= sv_av_weight <= 1:
            raise UserError(f"{NAME}: method.params.sv_av_weight={sv_av_weight!r}; allowed: a number in [0, 1]")
        self.sv_av_weight = float(sv_av_weight)
        self.rank, self.merges = stage_counts(self.budget)
        self.merged = min(self.rank // 2, self.merges)  # what carve() merges: min(|A|, merges)

    def describe(self) -> dict:
        return {"work_layer": self.work_layer, "stage1_tokens": self.rank,
                "merged_tokens": self.merged, "sv_av_weight": self.sv_av_weight}

    def full_layers(self) -> int:
        return self.work_layer

    def max_image_tokens_after_cut(self, num_patches: int) -> int:
        return self.rank - self.merged

    def check(self, lm) -> None:
        n_layers = lm.language_model.config.num_hidden_layers
        check_depth(NAME, "work_layer", [self.work_layer], n_layers, 1, n_layers - 1,
                    "allowed K, the first layer that sees the carved tokens")
        if self.rank > lm.num_patches:
            raise UserError(f"{NAME}: budget {self.budget} needs {self.rank} image tokens in stage I but the model "
                            f"has {lm.num_patches}; allowed budgets: 1..{lm.num_patches * 2 // 3}")

    @torch.no_grad()
    def after_layer(self, layer_idx: int, view: LayerView) -> TokenState | None:
        if layer_idx != self.work_layer - 1:
            return None
        state = view.state
        probs = attention_rows(view.layers[layer_idx], view.layer_input, view.position_embeddings,
                               view.attention_mask, last_token_index(state), scale="divide")  # (B, H, 1, L)
        image_pos = image_positions(state.is_image)  # (B, n)
        attention = probs.mean(dim=1)[:, 0].gather(1, image_pos)  # (B, n) float32
        width = state.hidden.shape[-1]
        image_states = torch.gather(state.hidden, 1, image_pos[..., None].expand(-1, -1, width))  # (B, n, d)
        fused = fused_ranks(attention, information_scores(image_states), self.sv_av_weight)
        kept, merged, sources, destinations = carve(fused, image_states, self.rank, self.merges)
        hidden = state.hidden.scatter(1, image_pos[..., None].expand(-1, -1, width), merged)
        # every image token is still there: local indices are patch indices
        view.context.record(kept_indices=kept.tolist(), merged_indices=sources.sort(dim=1).values.tolist(),
                            merge_target_indices=[sorted(set(row)) for row in destinations.tolist()])
        return state.with_hidden(hidden).gather(keep_indices(state.is_image, image_pos, kept))  # original positions
