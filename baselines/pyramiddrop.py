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

On Qwen2.5-VL (svdprune/families/qwen25vl.py; the authors published no Qwen version, nor does llmc run its PyramidDrop on one):
the same ranking and stages, with two differences the model forces. (1) Positions: M-RoPE gives image tokens 3-D
positions that have no "renumbered" form, so the kept tokens keep their own (as DART's and FlowCut's Qwen code do);
a 1-D LLaVA run renumbers as released. (2) Schedule: each image has its own token count N and the LLM 28 layers, so
the table's rule is applied to them (:func:`fit_keep_counts`, per group of equal N): layers ``fit_layers``
([2, 8, 16]) and lambda on a 1e-4 grid so that the n-layer average is closest to the image's budget, or, when that
average is out of reach, lambda = budget / N. On N = 576 and 32 layers the rule gives exactly the table's keep counts
for all five budgets (tests/test_baselines_decoder.py). ``layers``/``ratios`` set by the user are used as given
(fractions of N, as the released code). Every image records its ``stage_keep_counts``.

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
from svdprune.params import IntList, NumberList, Table
from svdprune.pruning import DecoderPruner, LayerView, TokenState, register

from .attention import (attention_rows, check_depth, image_positions, keep_indices, last_token_index,
                        layer_average, renumber, top_k)


# The schedule table configs/method/pyramiddrop.yaml ships (how it was fitted: that file's comments): budget -> stage
# layers and keep ratios
SCHEDULES = {
    192: {"layers": [2, 8, 16], "ratios": [0.5598, 0.31337604, 0.17542790]},
    128: {"layers": [2, 8, 16], "ratios": [0.4209, 0.17715681, 0.07456530]},
    64: {"layers": [2, 8, 16], "ratios": [0.1928, 0.03717184, 0.00716673]},
    32: {"layers": [2, 8, 16], "ratios": [0.0556, 0.00309136, 0.00017188]},
    16: {"layers": [2, 8, 16], "ratios": [0.0278, 0.00077284, 0.00002148]},
}


def fit_keep_counts(image_tokens: int, n_layers: int, stage_layers: list[int], budget: int) -> list[int]:
    """The schedule table's rule for any image size and depth: keep counts ``int(N * lambda^s)``, s = 1, 2, ..., with
    lambda = i / 10000 (i = 1..10000) whose ``n_layers`` average is closest to ``budget`` (ties: the smaller lambda).
    When the budget is below the smallest reachable average (layers before the first stage see all N), the first stage
    keeps the budget: lambda = budget / N, keeps ``budget^s // N^(s-1)``."""
    reachable = stage_layers[0] * image_tokens / n_layers
    if budget < reachable:
        return [budget ** s // image_tokens ** (s - 1) for s in range(1, len(stage_layers) + 1)]
    best = None
    for i in range(1, 10_001):
        lam = i / 10_000
        keeps = [int(image_tokens * lam ** s) for s in range(1, len(stage_layers) + 1)]
        distance = abs(layer_average(image_tokens, n_layers, stage_layers, keeps) - budget)
        if best is None or distance < best[0]:
            best = (distance, keeps)
    return best[1]


def _check_layers(layers, name: str) -> list[int]:
    """Stage layers: a non-empty, strictly increasing list of layer indices >= 1 (``name`` for the messages)."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise UserError(f"pyramiddrop: {name}={layers!r}; allowed: a non-empty list of layer indices")
    layers = [check_int(f"pyramiddrop {name}[{i}]", layer, 1) for i, layer in enumerate(layers)]
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise UserError(f"pyramiddrop: {name}={layers}; allowed: strictly increasing layer indices")
    return layers


def _check_schedule(layers, ratios, source: str) -> tuple[list[int], list[float]]:
    layers = _check_layers(layers, f"{source} layers")
    if not isinstance(ratios, (list, tuple)) or len(ratios) != len(layers):
        raise UserError(f"pyramiddrop: {source} ratios={ratios!r}; allowed: one keep ratio per layer ({len(layers)})")
    for i, ratio in enumerate(ratios):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise UserError(f"pyramiddrop: {source} ratios[{i}]={ratio!r}; allowed: a fraction in [0, 1]")
    ratios = [float(r) for r in ratios]
    if any(b > a for a, b in zip(ratios, ratios[1:])):
        raise UserError(f"pyramiddrop: {source} ratios={ratios}; allowed: non-increasing fractions")
    return layers, ratios


@register
class PyramidDrop(DecoderPruner):
    """Multi-stage drop of image tokens ranked by the last instruction token's attention."""

    name, label, in_paper, table_row = "pyramiddrop", "PyramidDrop", True, 140

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"layers": IntList(low=1, nullable=True, min_items=1, default=None),
              "ratios": NumberList(0, 1, nullable=True, default=None), "schedules": Table(nullable=True, default=SCHEDULES),
              "fit_layers": IntList(low=1, min_items=1)}  # fit_layers: not in the config (LLaVA run hashes stay)

    @classmethod
    def shallow_params(cls, budget: int, n_layers: int) -> dict:
        """A shallow LLM of ``n_layers``: stages at layers 1 .. min(3, n_layers - 1) (the table's [2, 8, 16] of 32,
        scaled and rounded to valid layers), keep ratios lambda, lambda^2, lambda^3 with lambda = (budget + 0.5) / 576,
        so that int(576 * lambda) = budget after the first stage (the structure of the LLaVA table)."""
        lam = (budget + 0.5) / 576
        stages = min(3, n_layers - 1)
        return {"layers": list(range(1, stages + 1)), "ratios": [lam ** s for s in range(1, stages + 1)]}

    def __init__(self, budget: int, schedules: dict | None = None, layers: list[int] | None = None,
                 ratios: list[float] | None = None, fit_layers: list[int] = (2, 8, 16)):
        self.budget = check_int("budget", budget, 1)
        self.fit_layers = _check_layers(fit_layers, "method.params.fit_layers")
        self.user_schedule = layers is not None or ratios is not None
        self.fitted_keeps: list[int] | None = None  # set by for_image_tokens (Qwen2.5-VL): the image's own schedule
        self._no_schedule: str | None = None  # a budget without a table entry: an error on LLaVA (check)
        if self.user_schedule:
            self.layers, self.ratios = _check_schedule(layers, ratios, "method.params")
        else:
            table = {int(k): v for k, v in (schedules or {}).items()}
            if budget not in table:
                self._no_schedule = (f"pyramiddrop: budget={budget} has no schedule; allowed budgets: "
                                     f"{', '.join(map(str, sorted(table)))} (or set method.params.layers and ratios)")
                self.layers, self.ratios = list(self.fit_layers), None
            else:
                entry = table[budget]
                if not isinstance(entry, dict) or set(entry) != {"layers", "ratios"}:
                    raise UserError(f"pyramiddrop: schedules[{budget}]={entry!r}; allowed: "
                                    "{layers: [...], ratios: [...]}")
                self.layers, self.ratios = _check_schedule(entry["layers"], entry["ratios"], f"schedules[{budget}]")
        self._initial_images = 0

    def keep_counts(self, initial_images: int = 576) -> list[int]:
        """Image tokens kept at each stage, ``int(initial * ratio)`` as the official code (or the fitted counts)."""
        if self.fitted_keeps is not None:
            return list(self.fitted_keeps)
        if self.ratios is None:
            return []
        return [int(initial_images * ratio) for ratio in self.ratios]

    def describe(self) -> dict:
        if self.ratios is None and self.fitted_keeps is None:
            return {"stage_layers": list(self.layers), "schedule": "fitted per image token count (fit_keep_counts)"}
        return {"stage_layers": list(self.layers), "ratios": self.ratios and list(self.ratios),
                "keep_counts": self.keep_counts()}

    def full_layers(self) -> int:
        return self.layers[0]

    def max_image_tokens_after_cut(self, num_patches: int) -> int:
        return max(self.keep_counts(num_patches), default=num_patches)

    def check_family(self, capabilities: frozenset) -> None:
        """A budget without a table entry runs only where images have their own token counts (no ``fixed_grid``:
        Qwen2.5-VL), where the schedule is fitted per image; on one fixed grid (LLaVA-1.5's 576) the table is the
        schedule."""
        if self._no_schedule is not None and "fixed_grid" in capabilities:
            raise UserError(self._no_schedule)

    def check(self, lm) -> None:
        n_layers = lm.language_model.config.num_hidden_layers
        check_depth("pyramiddrop", "layers", self.layers, n_layers, 1, n_layers - 1,
                    "allowed stage layers, each the first layer that sees the dropped set")

    def for_image_tokens(self, image_tokens: int, budget: int, n_layers: int) -> "PyramidDrop":
        """The schedule for images of ``image_tokens`` tokens (Qwen2.5-VL): the table's rule refitted
        (:func:`fit_keep_counts`), or the user's layers and ratios as given."""
        clone = self.with_budget(budget)
        if not self.user_schedule:
            clone.layers, clone.ratios = list(self.fit_layers), None
            clone.fitted_keeps = fit_keep_counts(image_tokens, n_layers, clone.layers, budget)
            clone._no_schedule = None
        return clone

    def after_layer(self, layer_idx: int, view: LayerView) -> TokenState | None:
        state = view.state
        if layer_idx == 0:
            self._initial_images = image_positions(state.is_image).shape[1]
        if layer_idx + 1 not in self.layers:
            return None
        stage = self.layers.index(layer_idx + 1)
        image_pos = image_positions(state.is_image)
        keep = min(self.keep_counts(self._initial_images)[stage], image_pos.shape[1])
        probs = attention_rows(view.layers[layer_idx + 1], state.hidden, view.position_embeddings,
                               view.attention_mask, last_token_index(state), scale="divide")
        scores = probs.mean(dim=1)[:, 0]  # (B, L): head mean in float32 (official: model dtype; attention_rows)
        keep_local = top_k(scores.gather(1, image_pos), keep)
        if stage == 0:  # all image tokens still there (raster order): local indices are patch indices
            view.context.record(kept_indices=keep_local.sort(dim=1).values.tolist())
            if self.fitted_keeps is not None:
                view.context.record(stage_keep_counts=[list(self.fitted_keeps)] * len(keep_local))
        dropped = state.gather(keep_indices(state.is_image, image_pos, keep_local))
        if dropped.position_ids.dim() == 2:  # LLaVA's 1-D positions: renumbered as released; M-RoPE's 3-D: kept
            dropped.position_ids = renumber(dropped.padding)
        return dropped
