"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024), KV-cache variant.

Checked against pkunlp-icler/FastV: ``src/transformers/src/transformers/models/llama/modeling_llama.py``
(the ``fast_v_inplace`` branch of ``LlamaModel.forward``), ``modeling_llama_fastv_kvcache.py`` and the
lmms-eval port ``src/FastV/lmms-eval/fastv_kvcache.py``. What it computes:

* Layers 0 .. K-1 see every token. After layer K-1, each image token is scored by the post-softmax
  attention that the **last prompt token** pays to it in layer K-1 (eager attention: logits divided by
  sqrt(head_dim), softmax in float32, cast to the model dtype), **averaged over heads**.
* The top ``budget`` image tokens (``torch.topk``) are kept and sorted back into their original order;
  every text token is kept. Layers K .. N-1 see only those tokens, with their **original (gapped)
  position ids**; their KV caches hold only them, and decoding continues at position L, L+1, ...
  (as the unpruned model and the official lmms-eval port do).
* Precision: Ours keeps the probabilities and their head mean in float32 and ranks with
  :func:`attention.top_k` (ties to the lower index) instead of the official fp16 values and ``torch.topk``:
  identical in a float32 run; in half precision the same selection on every device (the official fp16 ranking
  has exact ties at the k-th place that CUDA's topk breaks arbitrarily; where it has none, the two agree
  unless fp16 rounding reorders near-equal scores).
* Defaults: K = 2 (the paper's; the lmms-eval port hard-codes K = 3). ``budget`` is the number of image
  tokens kept (the paper's R = 50% is budget 288).

Differences from the official code, all deliberate: the official inplace code is batch size 1 with the
image at hard-coded offsets (35..611) and prunes again at every decode step without a cache; here the
image span comes from the input ids, batches are left-padded, and the cut is made once at prefill from
the last prompt token (the KV-cache variant: the only one that saves compute). The attention row is
recomputed from layer K-1's q/k (:func:`baselines.attention.attention_rows`) so SDPA stays on.

ModelTC/llmc (LightCompress) at 05eedff, ``llmc/compression/token_reduction/fastv.py`` (read, not run): the same
selection (layer K-1's last-token head-mean attention over the image span, top-k, original position ids, layers
0 .. K-1 keep their full cache). It differs in form, not in the kept set: the budget is a rate (k =
``round(576 * (1 - rate))``), only batch row 0 is read, and the attention is rerun through the layer's own
eager forward (HF's ``* head_dim ** -0.5`` scaling, model dtype) where ours follows FastV's ``/ sqrt(head_dim)``
in float32, so the two can differ only where rounding reorders near-equal scores.

Budget convention (decoder-side methods): ``budget`` = image tokens after the cut; the 32-layer
average is (K * 576 + (32 - K) * budget) / 32 and is in metrics.json (``image_tokens_mean_over_layers``).
"""
from __future__ import annotations

from svdprune.errors import check_int
from svdprune.params import Integer
from svdprune.pruning import DecoderPruner, LayerView, TokenState, register

from .attention import attention_rows, check_depth, image_positions, keep_indices, last_token_index, top_k


@register
class FastV(DecoderPruner):
    """Keep the ``budget`` image tokens the last prompt token attends to most in layer ``agg_layer - 1``."""

    name, label, in_paper, table_row = "fastv", "FastV", True, 130

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"agg_layer": Integer(1, default=2)}

    @classmethod
    def shallow_params(cls, budget: int, n_layers: int) -> dict:
        """A shallow LLM (the project's mini and scenes models): K = 1, the cut after layer 0 (FastV's K=2 of 32 is the
        1/16 point of the depth)."""
        return {"agg_layer": 1}

    def __init__(self, budget: int, agg_layer: int = 2):
        self.budget = check_int("budget", budget, 1, what=" (image tokens kept after layer agg_layer - 1)")
        self.agg_layer = check_int("method.params.agg_layer", agg_layer, 1,
                                   what=" (K: layers 0..K-1 see every token, the cut is made after layer K-1)")

    def describe(self) -> dict:
        return {"agg_layer": self.agg_layer, "kept_after_layer": self.agg_layer - 1}

    def full_layers(self) -> int:
        return self.agg_layer

    def check(self, lm) -> None:
        n_layers = lm.language_model.config.num_hidden_layers
        check_depth("fastv", "agg_layer", [self.agg_layer], n_layers, 1, n_layers - 1,
                    "allowed K, the first layer that sees the pruned tokens")

    def after_layer(self, layer_idx: int, view: LayerView) -> TokenState | None:
        if layer_idx != self.agg_layer - 1:
            return None
        state = view.state
        probs = attention_rows(view.layers[layer_idx], view.layer_input, view.position_embeddings,
                               view.attention_mask, last_token_index(state), scale="divide")
        scores = probs.mean(dim=1)[:, 0]  # (B, L): head mean in float32 (official: model dtype; attention_rows)
        image_pos = image_positions(state.is_image)
        image_scores = scores.gather(1, image_pos)
        keep_local = top_k(image_scores, min(self.budget, image_pos.shape[1]))
        # every image token is still there (raster order): local indices are patch indices; a record only
        view.context.record(kept_indices=keep_local.sort(dim=1).values.tolist())
        return state.gather(keep_indices(state.is_image, image_pos, keep_local))  # original position ids
