"""DART: token duplication, not importance, decides what to prune (Wen et al., 2025), decoder side.

Reference: the authors' own repository ZichenWen1/DART could not be fetched from here; its authors' implementation
in ModelTC/llmc (LightCompress) at 05eedff08c58ce5a3a4e2e879133bc922dff6ff5 is followed:
``llmc/compression/token_reduction/dart.py`` (``get_any_states_hook`` lines 62-103, ``pruning_hook`` lines
105-154, ``get_retained_image_token`` lines 190-245) with ``configs/sparsification/methods/DART/dart.yml``
(``pruning_loc: 2``, ``pivot_image_token: 4``, ``pivot_text_token: 4``, ``max_num_trunction: 128``). Training-free.

With K = ``pruning_loc`` (2): layers 0 .. K-1 see every token. Before layer K, per prompt:

1. Keys of layer K-1 (its input LayerNorm, ``k_proj`` and RoPE on the hidden states that entered it), all heads
   concatenated per token; their L1 norm.
2. **Pivots**: the ``pivot_image_token`` image tokens and the ``pivot_text_token`` tokens after the image (the
   question, the instruction and ``ASSISTANT:``) with the largest key L1 norm.
3. States for similarity: the LLM's **final** RMSNorm applied to layer K-1's output (``model.norm``, as the
   released code does). Candidates: the image tokens that are not image pivots. For each pivot, in the order
   the released code visits them (the iteration order of the Python ``set`` of their absolute prompt positions),
   the ``T = max_num_trunction // (pivot_image_token + pivot_text_token)`` candidates with the **lowest** cosine
   similarity to the pivot are kept and leave the candidate pool.
4. Layers K .. N-1 see the image pivots plus all those kept tokens, and every text token, with their
   **original (gapped) position ids**; their KV caches hold only them, layers 0 .. K-1 keep the full cache, and
   decoding continues at positions L, L+1, ... (the released hook copies the kept positions into
   ``cache_position``/``position_ids``).

Budget: ``budget`` is the released ``max_num_trunction``, so a budget k keeps ``pivot_image_token +
(pivot_image_token + pivot_text_token) * (k // 8)`` image tokens after the cut, e.g. 132 for 128 (the llmc
config's "128"), 196 / 68 / 36 / 20 for 192 / 64 / 32 / 16: that is what the released code keeps, and the run's
metrics report the real per-layer counts. Where T exceeds the candidates left (budgets near 576), a pivot keeps
all of them (the released ``topk`` would raise).

Differences on purpose: batched (the released hook reads row 0 only: batch size 1); rows are left-padded
here, and the absolute positions are those of the unpadded prompt (what the released code sees). Key norms and
similarities in float32 (released: the model dtype); the pivots' ``topk`` and the candidates' ``topk`` are
stable sorts, ties to the lower index (released: unspecified); the visiting order of step 3 is reproduced
exactly, since it changes which tokens a later pivot can still take.

The committed fixture ``tests/fixtures/official/dart.json`` holds ``get_retained_image_token``'s output on seeded
inputs of LLaVA-1.5-7B's shapes; ``tests/test_methods_2025.py`` requires ours to equal it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import repeat_kv

from svdprune.params import Integer
from svdprune.pruning import DecoderPruner, LayerView, TokenState, register

from .attention import _rope, check_depth, image_positions, keep_indices
from ._encoder_common import check_int

NAME = "dart"


def layer_keys(layer, hidden: torch.Tensor, position_embeddings) -> torch.Tensor:
    """(B, L, H * head_dim) float32 keys of decoder ``layer`` for the hidden states entering it, after RoPE,
    heads repeated for GQA and concatenated per token (the released ``any_states[-2]`` reshaped)."""
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    key = attn.k_proj(layer.input_layernorm(hidden)).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    key = repeat_kv(_rope(key, cos, sin), attn.num_key_value_groups)  # (B, H, L, D)
    return key.transpose(1, 2).reshape(batch, length, -1).float()


def _largest(values: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest values of a 1-D tensor, ties to the lower index."""
    return torch.sort(values, descending=True, stable=True).indices[:k].tolist()


def dart_retained(key_norms: torch.Tensor, states: torch.Tensor, image: list[int], text: list[int],
                  pivot_image: int, pivot_text: int, per_pivot: int) -> list[int]:
    """One prompt's retained image tokens, ascending.

    key_norms: (L,) L1 norm of each token's keys; states: (L, d) final-norm states; image / text: the absolute
    positions of the image tokens and of the tokens after the image. Returns absolute positions.
    """
    image_pivots = [image[i] for i in _largest(key_norms[image], pivot_image)]
    text_pivots = [text[i] for i in _largest(key_norms[text], pivot_text)]
    candidates = [p for p in image if p not in set(image_pivots)]  # ascending, like the released set's order
    retained = set(image_pivots)
    for pivot in list(set(image_pivots + text_pivots)):  # the released visiting order (Python set order)
        if not candidates:
            break
        similarity = -F.cosine_similarity(states[pivot].float(), states[candidates].float(), dim=-1)
        picks = {candidates[i] for i in _largest(similarity, min(per_pivot, len(candidates)))}
        retained |= picks
        candidates = [p for p in candidates if p not in picks]
    return sorted(retained)


@register
class Dart(DecoderPruner):
    """Keeps DART's pivots and, per pivot, the image tokens least similar to it, before layer ``pruning_loc``."""

    name, label, in_paper, table_row = "dart", "DART", False, 160

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"pruning_loc": Integer(1, default=2), "pivot_image_token": Integer(1, default=4),
              "pivot_text_token": Integer(1, default=4)}

    @classmethod
    def shallow_params(cls, budget: int, n_layers: int) -> dict:
        """A shallow LLM: pruning_loc 1 (pivots from layer 0's keys; the later layers see the kept tokens)."""
        return {"pruning_loc": 1}

    def __init__(self, budget: int, pruning_loc: int = 2, pivot_image_token: int = 4, pivot_text_token: int = 4):
        # upper bounds come from the model (check): 576 on LLaVA-1.5, an image's own count on Qwen2.5-VL
        self.budget = check_int(NAME, "budget", budget, 1)
        self.pruning_loc = check_int(NAME, "method.params.pruning_loc", pruning_loc, 1)
        self.pivot_image = check_int(NAME, "method.params.pivot_image_token", pivot_image_token, 1)
        self.pivot_text = check_int(NAME, "method.params.pivot_text_token", pivot_text_token, 1)
        self.per_pivot = self.budget // (self.pivot_image + self.pivot_text)  # released: ceil(trunc // pivots)

    def with_budget(self, budget: int) -> "Dart":
        clone = super().with_budget(budget)
        clone.per_pivot = budget // (self.pivot_image + self.pivot_text)
        return clone

    def kept_image_tokens(self, num_patches: int = 576) -> int:
        """Image tokens after the cut: the image pivots plus T per pivot (fewer near num_patches)."""
        return min(num_patches, self.pivot_image + (self.pivot_image + self.pivot_text) * self.per_pivot)

    def describe(self) -> dict:
        return {"pruning_loc": self.pruning_loc, "per_pivot": self.per_pivot,
                "image_tokens_after_cut": self.kept_image_tokens()}

    def full_layers(self) -> int:
        return self.pruning_loc

    def max_image_tokens_after_cut(self, num_patches: int) -> int:
        return self.kept_image_tokens(num_patches)

    def check(self, lm) -> None:
        n_layers = lm.language_model.config.num_hidden_layers
        check_depth(NAME, "pruning_loc", [self.pruning_loc], n_layers, 1, n_layers - 1,
                    "allowed K, the first layer that sees the pruned tokens")
        check_int(NAME, "budget", self.budget, 1, lm.num_patches)
        check_int(NAME, "method.params.pivot_image_token", self.pivot_image, 1, lm.num_patches)

    @torch.no_grad()
    def after_layer(self, layer_idx: int, view: LayerView) -> TokenState | None:
        if layer_idx != self.pruning_loc - 1:
            return None
        state = view.state
        keys = layer_keys(view.layers[layer_idx], view.layer_input, view.position_embeddings)  # (B, L, H*D)
        key_norms = torch.norm(keys, p=1, dim=-1)  # (B, L) L1, the released call
        states = view.context.final_norm(state.hidden)  # (B, L, d) the final RMSNorm
        image_pos = image_positions(state.is_image)  # (B, n) slots, ascending
        keep_local, records = [], []
        for row in range(state.hidden.shape[0]):
            slots = image_pos[row].tolist()
            after = list(range(slots[-1] + 1, state.hidden.shape[1]))  # left padding: all real tokens
            offset = int((state.padding[row]).sum())  # slot = position in the unpadded prompt + offset
            kept = dart_retained(key_norms[row, offset:], states[row, offset:],
                                 [s - offset for s in slots], [s - offset for s in after],
                                 self.pivot_image, self.pivot_text, self.per_pivot)
            local = [slots.index(p + offset) for p in kept]
            keep_local.append(local)
            records.append(local)
        counts = {len(k) for k in keep_local}
        if len(counts) != 1:
            raise ValueError(f"DART kept different numbers of image tokens per row: {sorted(counts)}")
        keep_local = torch.tensor(keep_local, dtype=torch.long, device=image_pos.device)
        view.context.record(kept_indices=records)  # every image token is still there: local = patch index
        return state.gather(keep_indices(state.is_image, image_pos, keep_local))  # original position ids
