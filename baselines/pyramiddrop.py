"""PyramidDrop (Xing et al., CVPR 2025), training-free inference.

Checked against Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py`` (``pdrop_forward``,
``pdrop_rank_drop``) and ``llava/model/llava_arch.py`` (``prompt_len``, ``image_token_posi``). What it computes:

* Stage layers ``layers = [l1, l2, ...]`` and absolute keep ratios ``ratios = [r1, r2, ...]`` (fractions
  of the image tokens entering the LLM, 576): after layer l_s - 1 (prefill only) the image tokens are cut
  to ``int(576 * r_s)``, so layers l_s .. l_{s+1} - 1 see that many.
* Score: the output of layer l_s - 1 goes through **layer l_s's** input LayerNorm, Q/K projections and
  RoPE (at the current positions); the query is the **last instruction token** (the last prompt token);
  logits divided by sqrt(head_dim), causal mask, softmax in float32 over the full row, cast to the model
  dtype, mean over heads, then the image columns. ``torch.topk`` of them, sorted back to original order;
  text tokens always kept.
* Precision: Ours keeps the probabilities and their head mean in float32 and ranks with
  :func:`attention.top_k` (ties to the lower index) instead of the official fp16 values and ``torch.topk``:
  identical in a float32 run; in half precision the same selection on every device (the official fp16 ranking
  has exact ties at the k-th place that CUDA's topk breaks arbitrarily; where it has none, the two agree
  unless fp16 rounding reorders near-equal scores).
* Positions are **renumbered** 0, 1, ... after every drop (the official code rebuilds ``position_ids``
  from the new length and, when decoding, shifts them by the number of dropped tokens): layer group s
  decodes at position (its prompt length) + step.

Batches: the official inference code is batch size 1 (right padding); here rows are left-padded, the
last slot is every row's last prompt token, and renumbering skips the padding.

Schedules (``schedules`` in ``configs/method/pyramiddrop.yaml``): the repo default is layers [8, 16, 24],
ratios [0.5, 0.25, 0.125] (lambda = 0.5, a 32-layer average of 270 tokens). For a budget the table keeps
the lambda, lambda^2, lambda^3 structure with the author's small-budget layers [2, 8, 16] (PyramidDrop
issues #10 / #29) and lambda solved so that the 32-layer average (layer counts with ``int()`` as the
official code) is closest to the budget: 192 -> 191.875, 128 -> 127.875, 64 -> 64.06. Budgets 32 and 16
cannot be reached as an average (layers 0 and 1 see 576: the minimum is 36), so for them ``budget`` =
image tokens after the first stage (lambda = budget / 576): 32 -> [32, 1, 0] (average 42.25),
16 -> [16, 0, 0] (average 39.0). ``layers``/``ratios`` override the table. A schedule that needs a
layer the model does not have is an error at first use (never rescaled).

ModelTC/llmc (LightCompress) at 05eedff, ``llmc/compression/token_reduction/pyramiddrop.py`` and its config
(read, not run): PyramidDrop's own default schedule, layers [8, 16, 24] with ratio 0.5 per stage (the authors'
LLaVA-1.5 setting), ranked by the last instruction token's attention (``topk``, sorted back); no budget matching.
Here the schedule is the budget-matched one above, so the two agree in the ranking rule, not in the stages.
"""
from __future__ import annotations

from svdprune.errors import UserError, check_int
from svdprune.pruning import DecoderPruner, LayerView, TokenState

from .attention import (attention_rows, check_depth, image_positions, keep_indices, last_token_index,
                        renumber, top_k)


def _check_schedule(layers, ratios, source: str) -> tuple[list[int], list[float]]:
    if not isinstance(layers, (list, tuple)) or not layers:
        raise UserError(f"pyramiddrop: {source} layers={layers!r}; allowed: a non-empty list of layer indices")
    layers = [check_int(f"pyramiddrop {source} layers[{i}]", layer, 1) for i, layer in enumerate(layers)]
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise UserError(f"pyramiddrop: {source} layers={layers}; allowed: strictly increasing layer indices")
    if not isinstance(ratios, (list, tuple)) or len(ratios) != len(layers):
        raise UserError(f"pyramiddrop: {source} ratios={ratios!r}; allowed: one keep ratio per layer ({len(layers)})")
    for i, ratio in enumerate(ratios):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise UserError(f"pyramiddrop: {source} ratios[{i}]={ratio!r}; allowed: a fraction in [0, 1]")
    ratios = [float(r) for r in ratios]
    if any(b > a for a, b in zip(ratios, ratios[1:])):
        raise UserError(f"pyramiddrop: {source} ratios={ratios}; allowed: non-increasing fractions")
    return layers, ratios


class PyramidDrop(DecoderPruner):
    """Multi-stage drop of image tokens ranked by the last instruction token's attention."""

    def __init__(self, budget: int, schedules: dict | None = None, layers: list[int] | None = None,
                 ratios: list[float] | None = None):
        self.budget = check_int("budget", budget, 1)
        if layers is not None or ratios is not None:
            self.layers, self.ratios = _check_schedule(layers, ratios, "method.params")
        else:
            table = {int(k): v for k, v in (schedules or {}).items()}
            if budget not in table:
                raise UserError(f"pyramiddrop: budget={budget} has no schedule; allowed budgets: "
                                f"{', '.join(map(str, sorted(table)))} (or set method.params.layers and ratios)")
            entry = table[budget]
            if not isinstance(entry, dict) or set(entry) != {"layers", "ratios"}:
                raise UserError(f"pyramiddrop: schedules[{budget}]={entry!r}; allowed: {{layers: [...], ratios: [...]}}")
            self.layers, self.ratios = _check_schedule(entry["layers"], entry["ratios"], f"schedules[{budget}]")
        self._initial_images = 0

    def keep_counts(self, initial_images: int = 576) -> list[int]:
        """Image tokens kept at each stage, ``int(initial * ratio)`` as the official code."""
        return [int(initial_images * ratio) for ratio in self.ratios]

    def describe(self) -> dict:
        return {"stage_layers": list(self.layers), "ratios": list(self.ratios), "keep_counts": self.keep_counts()}

    def full_layers(self) -> int:
        return self.layers[0]

    def max_image_tokens_after_cut(self, num_patches: int) -> int:
        return max(self.keep_counts(num_patches), default=num_patches)

    def check(self, lm) -> None:
        n_layers = lm.language_model.config.num_hidden_layers
        check_depth("pyramiddrop", "layers", self.layers, n_layers, 1, n_layers - 1,
                    "allowed stage layers, each the first layer that sees the dropped set")

    def after_layer(self, layer_idx: int, view: LayerView) -> TokenState | None:
        state = view.state
        if layer_idx == 0:
            self._initial_images = image_positions(state.is_image).shape[1]
        if layer_idx + 1 not in self.layers:
            return None
        stage = self.layers.index(layer_idx + 1)
        image_pos = image_positions(state.is_image)
        keep = min(int(self._initial_images * self.ratios[stage]), image_pos.shape[1])
        probs = attention_rows(view.layers[layer_idx + 1], state.hidden, view.position_embeddings,
                               view.attention_mask, last_token_index(state), scale="divide")
        scores = probs.mean(dim=1)[:, 0]  # (B, L): head mean in float32 (official: model dtype; attention_rows)
        keep_local = top_k(scores.gather(1, image_pos), keep)
        if stage == 0:  # all image tokens still there (raster order): local indices are patch indices
            view.context.record(kept_indices=keep_local.sort(dim=1).values.tolist())
        dropped = state.gather(keep_indices(state.is_image, image_pos, keep_local))
        dropped.position_ids = renumber(dropped.padding)
        return dropped
