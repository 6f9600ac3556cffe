"""SparseVLM v1.5 (Zhang et al., ICML 2025): text-guided, training-free pruning with token recycling.

Checked against Gumpest/SparseVLMs, branch ``v1.5``: ``llava/model/language_model/modelling_sparse_llama.py``
(``LlamaDynamicvitModel.forward``, ``LlamaDynamicvitFlashAttention2`` with ``return_logits``),
``score.py`` (``attn_postprocess_topk``, keep-count tables) and ``utils.py`` (``cluster_and_merge``,
the DPC-kNN recycling). What it computes:

1. **Raters, chosen once** from the LLM input embeddings: S = image x text dot products, softmax over the
   text tokens, mean over the image tokens; the raters are the text tokens (everything after the image)
   whose value is above the mean of S. They are indexed relative to the text start, so they follow the
   text as the image span shrinks.
2. At each pruning layer l in ``layers`` (default [2, 6, 15]) layer l runs on the full set (its KV cache
   stays full); score = layer l's own post-softmax attention (q/k with RoPE, logits * head_dim^-0.5, full
   causal row, softmax), mean over heads, rater rows x image columns, mean over raters. Image tokens kept:
   ``topk(min(count, n_image - 1))``, in their original order (candidates include earlier cluster tokens).
3. **Recycling** (``recycle: true``): of the deleted image tokens (index order) the top
   ``int(n_deleted * 0.3) + 1`` by score are clustered by density-peak kNN on the layer-l **output**
   states (L2 distance / sqrt(C); k = number of clusters = ``int(n / 10) + 1``; density exp(-mean d^2 of
   the k nearest) plus uniform noise * 1e-6 to break ties; parent distance; centres = top k of
   distance * density; each token joins its nearest centre); each cluster becomes the plain mean of its
   members (sum / (count + 1e-6), as the official code). Cluster tokens go right after the kept image
   tokens, before the text, and count as image tokens.
4. The output of layer l is cut (and extended by the cluster tokens); positions are **renumbered**
   0, 1, ...; layer group g decodes at position (its prompt length) + step, which is the official
   ``past_key_value.get_usable_length`` position.

Precision: Ours keeps the probabilities and their head mean in float32 and ranks (keep and recycling
candidates) with :func:`attention.top_k` (ties to the lower index) instead of the official fp16 values and
``torch.topk``: identical in a float32 run; in half precision the same selection on every device (the official
fp16 ranking has exact ties at the k-th place that CUDA's topk breaks arbitrarily; where it has none, the two
agree unless fp16 rounding reorders near-equal scores).

On Qwen2.5-VL (svdprune/families/qwen25vl.py; the authors published LLaVA and Video-LLaVA code only, and llmc runs its
SparseVLM on LLaVA): the same raters, scores, keep rule and recycling, with two differences the model forces.
(1) Positions: M-RoPE's 3-D positions have no "renumbered" form, so kept tokens keep their own (as DART's and
FlowCut's Qwen code do) and each cluster token takes the position of its cluster's centre (the density peak, itself a
deleted image token); a 1-D LLaVA run renumbers as released. (2) Keep counts: each image has its own token count N
and the LLM 28 layers, so the counts are fitted per group of equal N (:func:`fit_keep`): the table entry whose share
(budget / 576) is nearest the image's (budget / N) gives the shape, scaled by c = i / 1000 so that the official-rule
average (:func:`official_mean`) is closest to the budget; when even keep counts of 1 stay above the budget, the
first stage keeps the budget (the shape scaled by budget / its first count: the table's rule for 32 and 16). On N =
576 and 32 layers this gives the official 192 counts exactly, and [300, 109, 36] (127.97) for 128 and [64, 29, 16]
(63.75) for 64, whose averages are closer than the official ones (128.6, 64.8): the official counts are hand-set, so
no rule reproduces all of them; on LLaVA the table is used as it is. ``keep`` set by the user is used as given.
Every image records its ``stage_keep_counts``.

Batching (the official code is batch size 1): rows are left-padded; every row has the same number of
image tokens, so keep counts and cluster counts are equal across rows. Raters differ per row. The
clustering noise comes from a generator seeded with (``seed``, stage) and is the same for every row, so
a row's result does not depend on the other rows of its batch.

Keep counts per budget (``keep_counts`` in ``configs/method/sparsevlm.yaml``): official 192: [300, 200, 110],
128: [303, 110, 36], 64: [66, 30, 17]; their 32-layer averages (image tokens incl. recycled, a pruning
layer counted at its post-prune size, the official log's rule) are 192.03, 128.6 and 64.8. Derived, not
official: 32: [32, 15, 8] and 16: [16, 7, 4] = the 64 schedule scaled by budget / 66 and rounded (the
official 64 schedule's first keep count 66 is about its budget). With recycling the LLM then sees 49
(32) and 33 (16) image tokens after layer 2 (clusters come on top of the budget; exactly 16 is out of
reach since recycling alone adds >= 17 tokens at the first stage), and the official-rule averages are
51.7 and 45.0. Every image records ``image_tokens_mean_official`` (that average) in predictions.jsonl;
metrics.json has the engine's per-layer means (a pruning layer counted at the 576 it processed).
``keep`` overrides the table (one count per layer). A layer the model does not have is an error.

ModelTC/llmc (LightCompress) at 05eedff, ``llmc/compression/token_reduction/sparsevlm.py`` and its config (read,
not run): the same keep tables as here for 192 / 128 / 64 (``[300, 200, 110]``, ``[303, 110, 36]``, ``[66, 30, 17]``
at layers 2, 6, 15), but its shipped config prunes at layer 2 only (``pruning_loc: [2]``) and switches the token
recycling off (``merge_flag: False``); with that config it is not SparseVLM v1.5 as released (three stages with
recycling), which is what this file implements.
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError, check_int
from svdprune.params import Flag, IntList, Table
from svdprune.pruning import DecoderPruner, LayerView, TokenState, register

from ._scatter import scatter_sum_in_order
from .attention import (attention_rows, check_depth, image_positions, keep_indices, layer_average, renumber,
                        top_k, true_positions)

RECYCLE_FRACTION = 0.3  # of the deleted image tokens, the top 30% by score are clustered
CLUSTER_DIVISOR = 10  # clusters = int(candidates / 10) + 1


def select_raters(embeds: torch.Tensor, is_image: torch.Tensor) -> list[torch.Tensor]:
    """Per row, the rater offsets relative to the text start (the first token after the image).

    embeds: (B, L, d) LLM input embeddings; is_image: (B, L). Computed in the embeddings' dtype, as the
    official code (softmax over the text tokens, mean over the image tokens, > the row mean). A row with
    no token above its mean (all equal) rates with every text token.
    """
    image_pos = image_positions(is_image)
    raters = []
    for row in range(embeds.shape[0]):
        start = int(image_pos[row, -1]) + 1
        vision, text = embeds[row, image_pos[row]], embeds[row, start:]
        relevance = (vision @ text.T).softmax(dim=-1).mean(dim=0)  # (T,)
        chosen = torch.where(relevance > relevance.mean())[0]
        raters.append(chosen if chosen.numel() else torch.arange(text.shape[0], device=embeds.device))
    return raters


def stage_counts(image_tokens: int, keep: list[int], recycle: bool = True) -> list[int]:
    """Image tokens after each pruning stage (kept plus cluster tokens), as :meth:`SparseVLM._prune` counts them."""
    counts, current = [], image_tokens
    for count in keep:
        if current > 0:
            kept = min(count, current - 1)
            if recycle and current - kept > 0:
                kept += int((int((current - kept) * RECYCLE_FRACTION) + 1) / CLUSTER_DIVISOR) + 1
            current = kept
        counts.append(current)
    return counts


def official_mean(image_tokens: int, n_layers: int, layers: list[int], keep: list[int], recycle: bool = True) -> float:
    """The official log's budget: image tokens per layer averaged over the LLM, a pruning layer counted at its
    post-prune size (``image_tokens_mean_official``)."""
    return layer_average(image_tokens, n_layers, layers, stage_counts(image_tokens, keep, recycle))


def fit_keep(image_tokens: int, n_layers: int, layers: list[int], budget: int, table: dict[int, list[int]],
             recycle: bool = True) -> list[int]:
    """Keep counts for images of ``image_tokens`` tokens whose official-rule average is closest to ``budget``: the
    ``table`` entry whose share (its budget / 576) is nearest budget / image_tokens (ties: the larger), scaled by c =
    i / 1000 (ties: the smaller c; c up to where the last count reaches the image's tokens, a stage keeping at most
    all but one as the released rule clips), each count at least 1; when counts of 1 already average above the budget,
    the shape scaled so that its first count is the budget."""
    share = budget / image_tokens
    shape = table[min(table, key=lambda key: (abs(key / 576 - share), -key))]

    def scaled(c: float) -> list[int]:
        return [max(1, round(c * count)) for count in shape]

    if official_mean(image_tokens, n_layers, layers, [1] * len(shape), recycle) > budget:
        return scaled(budget / shape[0])
    best, previous = None, None
    for i in range(1, int(1000 * image_tokens / shape[-1]) + 1):  # up to the last stage keeping all (counts clip)
        keep = scaled(i / 1000)
        if keep == previous:  # neighbouring c round to the same counts: the smaller c was scored already
            continue
        previous = keep
        distance = abs(official_mean(image_tokens, n_layers, layers, keep, recycle) - budget)
        if best is None or distance < best[0]:
            best = (distance, keep)
    return best[1]


def dpc_knn_merge(x: torch.Tensor, clusters: int, noise: torch.Tensor) -> torch.Tensor:
    """Density-peak kNN clustering of x (B, N, C) into ``clusters`` tokens (B, clusters, C), ordered by
    centre score (highest first). noise: (N,) uniform [0, 1) tie-breaking noise for the densities."""
    return dpc_knn(x, clusters, noise)[0]


def dpc_knn(x: torch.Tensor, clusters: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dpc_knn_merge` and the centres: (merged (B, clusters, C), centre index in x (B, clusters))."""
    batch, n, channels = x.shape
    dist = torch.cdist(x.float(), x.float(), compute_mode="donot_use_mm_for_euclid_dist").to(x.dtype)
    dist = dist / (channels ** 0.5)  # (B, N, N)
    nearest = dist.topk(clusters, dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    density = density + noise.to(device=x.device, dtype=density.dtype)[None] * 1e-6
    denser = (density[:, None, :] > density[:, :, None]).to(x.dtype)  # [b, i, j]: j denser than i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    parent_dist = (dist * denser + dist_max * (1 - denser)).min(dim=-1).values
    centres = (parent_dist * density).topk(clusters, dim=-1).indices  # (B, clusters)
    to_centre = dist.gather(1, centres[..., None].expand(-1, -1, n))  # (B, clusters, N)
    assign = to_centre.argmin(dim=1)  # (B, N), first centre on ties
    assign = assign.scatter(1, centres, torch.arange(clusters, device=x.device).expand(batch, -1))
    counts = torch.zeros(batch, clusters, dtype=x.dtype, device=x.device)
    counts = counts.scatter_add(1, assign, torch.ones_like(assign, dtype=x.dtype)) + 1e-6  # whole numbers: exact
    weights = 1.0 / counts.gather(1, assign)  # (B, N)
    merged = torch.zeros(batch, clusters, channels, dtype=x.dtype, device=x.device)
    return scatter_sum_in_order(merged, assign, x * weights[..., None]), centres  # deterministic scatter_add on CUDA


# The keep counts configs/method/sparsevlm.yaml ships: budget -> image tokens kept after each pruning layer
KEEP_COUNTS = {192: [300, 200, 110], 128: [303, 110, 36], 64: [66, 30, 17], 32: [32, 15, 8], 16: [16, 7, 4]}


@register
class SparseVLM(DecoderPruner):
    """Text-rater scoring at ``layers`` with the ``keep`` counts per stage and DPC-kNN recycling."""

    name, label, in_paper, table_row = "sparsevlm", "SparseVLM", True, 150

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"layers": IntList(low=0, min_items=1, default=[2, 6, 15]), "recycle": Flag(default=True),
              "keep": IntList(low=1, nullable=True, default=None), "keep_counts": Table(nullable=True, default=KEEP_COUNTS)}

    @classmethod
    def shallow_params(cls, budget: int, n_layers: int) -> dict:
        """A shallow LLM of ``n_layers``: pruning layers 0 .. min(3, n_layers - 1) - 1 (the [2, 6, 15] of 32, scaled),
        keep [k, round(0.45 k), round(0.26 k)] (at least 1; the official 64-token schedule's proportions 66 / 30 / 17)
        cut to that many stages, recycling on."""
        stages = min(3, n_layers - 1)
        keep = [budget, max(1, round(0.45 * budget)), max(1, round(0.26 * budget))][:stages]
        return {"layers": list(range(stages)), "keep": keep}

    def __init__(self, budget: int, layers: list[int] = (2, 6, 15), keep_counts: dict | None = None,
                 keep: list[int] | None = None, recycle: bool = True):
        self.budget = check_int("budget", budget, 1)
        if not isinstance(layers, (list, tuple)):
            raise UserError(f"sparsevlm: method.params.layers={layers!r}; allowed: a list of layer indices")
        self.layers = [check_int(f"sparsevlm method.params.layers[{i}]", l, 0) for i, l in enumerate(layers)]
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise UserError(f"sparsevlm: method.params.layers={self.layers}; allowed: strictly increasing")
        self.table = {int(k): v for k, v in (keep_counts or {}).items()}
        self.user_keep = keep is not None
        self._no_keep: str | None = None  # a budget without keep counts: an error on LLaVA (check)
        if keep is None and budget not in self.table:
            self._no_keep = (f"sparsevlm: budget={budget} has no keep counts; allowed budgets: "
                             f"{', '.join(map(str, sorted(self.table)))} (or set method.params.keep)")
            keep, source = None, None
        elif keep is None:
            keep, source = self.table[budget], f"keep_counts[{budget}]"
        else:
            source = "method.params.keep"
        if keep is not None:
            if not isinstance(keep, (list, tuple)) or len(keep) != len(self.layers):
                raise UserError(f"sparsevlm: {source}={keep!r}; allowed: one count per pruning layer "
                                f"({len(self.layers)})")
            keep = [check_int(f"sparsevlm {source}[{i}]", k, 1) for i, k in enumerate(keep)]
        self.keep = keep
        if not isinstance(recycle, bool):
            raise UserError(f"sparsevlm: method.params.recycle={recycle!r}; allowed: true, false")
        self.recycle = recycle
        self.fitted = False  # set by for_image_tokens (Qwen2.5-VL): keep counts fitted to the image's own tokens
        self._raters: list[torch.Tensor] = []
        self._counts: list[int] = []

    def describe(self) -> dict:
        keep = list(self.keep) if self.keep is not None else "fitted per image token count (fit_keep)"
        return {"prune_layers": list(self.layers), "keep_counts": keep, "recycle": self.recycle}

    def for_image_tokens(self, image_tokens: int, budget: int, n_layers: int) -> "SparseVLM":
        """Keep counts for images of ``image_tokens`` tokens (Qwen2.5-VL): fitted (:func:`fit_keep`), or the user's."""
        clone = self.with_budget(budget)
        if not self.user_keep:
            clone.keep = fit_keep(image_tokens, n_layers, self.layers, budget, self.table, self.recycle)
            clone.fitted, clone._no_keep = True, None
        return clone

    def full_layers(self) -> int:
        return self.layers[0] + 1  # layer l runs on every token; its output is cut

    def max_image_tokens_after_cut(self, num_patches: int) -> int:
        keep = min(self.keep[0], num_patches - 1)
        candidates = int((num_patches - keep) * RECYCLE_FRACTION) + 1 if self.recycle else 0
        return keep + (int(candidates / CLUSTER_DIVISOR) + 1 if candidates else 0)

    def check_family(self, capabilities: frozenset) -> None:
        """A budget without a table entry runs only where images have their own token counts (no ``fixed_grid``:
        Qwen2.5-VL), where the schedule is fitted per image; on one fixed grid (LLaVA-1.5's 576) the table is the
        schedule."""
        if self._no_keep is not None and "fixed_grid" in capabilities:
            raise UserError(self._no_keep)

    def check(self, lm) -> None:
        n_layers = lm.language_model.config.num_hidden_layers
        check_depth("sparsevlm", "layers", self.layers, n_layers, 0, n_layers - 2,
                    "allowed pruning layers, whose output is cut (not the last layer)")

    def after_layer(self, layer_idx: int, view: LayerView) -> TokenState | None:
        state = view.state
        n_layers = len(view.layers)
        if layer_idx == 0:  # a new batch (the one host sync of the record: the image token count)
            self._raters = select_raters(view.layer_input, state.is_image)
            self._counts = [int(state.is_image[0].sum())]
        else:  # post-prune counts are known on the host (every row has the same): no sync per layer
            self._counts.append(self._counts[-1])
        if layer_idx in self.layers:
            new_state, count = self._prune(layer_idx, view, self._counts[-1])
            self._counts[-1] = count
        else:
            new_state = None
        if layer_idx == n_layers - 2:  # the last layer sees what the last call left
            counts = self._counts + [self._counts[-1]]
            view.context.record(image_tokens_mean_official=[sum(counts) / len(counts)] * state.hidden.shape[0])
        return new_state

    def _scores(self, layer_idx: int, view: LayerView, image_pos: torch.Tensor) -> torch.Tensor:
        """(B, n_image): head-mean attention of the raters to each image token, mean over raters."""
        text_start = image_pos[:, -1] + 1
        rows = [start + raters for start, raters in zip(text_start, self._raters)]
        width = max(r.numel() for r in rows)
        query = torch.stack([torch.cat([r, r[:1].expand(width - r.numel())]) for r in rows])  # padded (B, R)
        probs = attention_rows(view.layers[layer_idx], view.layer_input, view.position_embeddings,
                               view.attention_mask, query, scale="multiply")
        head_mean = probs.mean(dim=1)  # (B, R, L) in float32 (official: model dtype; see attention_rows)
        return torch.stack([head_mean[b, :rows[b].numel()][:, image_pos[b]].mean(dim=0)
                            for b in range(len(rows))])

    def _prune(self, layer_idx: int, view: LayerView, n_image: int) -> tuple[TokenState | None, int]:
        """(the pruned state or None, image tokens after it); ``n_image``: image tokens per row before it."""
        state = view.state
        stage = self.layers.index(layer_idx)
        if n_image == 0:  # only after recycle=false cut the last one
            return None, 0
        image_pos = image_positions(state.is_image, n_image)
        scores = self._scores(layer_idx, view, image_pos)
        keep = min(self.keep[stage], n_image - 1)
        kept_local = top_k(scores, keep)
        pruned = state.gather(keep_indices(state.is_image, image_pos, kept_local))
        if stage == 0:  # all image tokens still there (raster order): local indices are patch indices
            view.context.record(kept_indices=kept_local.sort(dim=1).values.tolist())
            if self.fitted:
                view.context.record(stage_keep_counts=[list(self.keep)] * len(kept_local))
        if self.recycle and n_image - keep > 0:
            deleted = torch.ones_like(scores, dtype=torch.bool).scatter(1, kept_local, False)
            deleted_local = true_positions(deleted, n_image - keep)  # index order, as policy == 0
            n_candidates = int(deleted_local.shape[1] * RECYCLE_FRACTION) + 1
            pick = top_k(scores.gather(1, deleted_local), n_candidates)  # score order
            candidates = image_pos.gather(1, deleted_local.gather(1, pick))
            if stage == 0:  # the patches merged into the recycled tokens (a record only)
                view.context.record(recycled_indices=deleted_local.gather(1, pick).sort(dim=1).values.tolist())
            x = state.hidden.gather(1, candidates[..., None].expand(-1, -1, state.hidden.shape[-1]))
            clusters = int(n_candidates / CLUSTER_DIVISOR) + 1
            generator = torch.Generator().manual_seed(view.context.seed * 1000 + stage)
            noise = torch.rand(n_candidates, generator=generator)
            # the kept image tokens are contiguous from the image start: the clusters go right after them
            merged, centres = dpc_knn(x, clusters, noise)
            centre_positions = None
            if state.position_ids.dim() == 3:  # M-RoPE: a cluster token sits at its centre's 3-D position
                slots = candidates.gather(1, centres)  # (B, clusters)
                centre_positions = state.position_ids.gather(2, slots[None].expand(3, -1, -1))
            pruned = self._insert(pruned, merged, image_pos[:, :1] + keep, centre_positions)
            keep += clusters
        if pruned.position_ids.dim() == 2:  # LLaVA's 1-D positions: renumbered as released; M-RoPE's 3-D: kept
            pruned.position_ids = renumber(pruned.padding)
        return pruned, keep

    @staticmethod
    def _insert(state: TokenState, extra: torch.Tensor, insert_at: torch.Tensor,
                extra_positions: torch.Tensor | None = None) -> TokenState:
        """Place the tokens ``extra`` (B, c, d), as image tokens, at slot ``insert_at`` (B, 1) of each row, with
        positions ``extra_positions`` ((3, B, c) M-RoPE; None: zeros, renumbered afterwards)."""
        batch, length = state.is_image.shape
        count = extra.shape[1]
        device = extra.device
        if extra_positions is None:
            extra_positions = state.position_ids.new_zeros(*state.position_ids.shape[:-1], count)
        joined = TokenState(
            hidden=torch.cat([state.hidden, extra.to(state.hidden.dtype)], dim=1),
            position_ids=torch.cat([state.position_ids, extra_positions], dim=-1),
            padding=torch.cat([state.padding, state.padding.new_zeros(batch, count)], dim=1),
            is_image=torch.cat([state.is_image, state.is_image.new_ones(batch, count)], dim=1),
        )
        slot = torch.arange(length + count, device=device)[None]  # new slot -> old slot (extra: L + i)
        order = torch.where(slot < insert_at, slot,
                            torch.where(slot < insert_at + count, length + slot - insert_at, slot - count))
        return joined.gather(order)
