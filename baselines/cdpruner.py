"""CDPruner: instruction-conditioned diversity by a determinantal point process (Zhang et al., 2025).

Reference: Theia-4869/CDPruner at 9541616c40fcd5625de1cdb8ea6c33c129eb7864, ``llava/model/llava_arch.py``
lines 140-186 (``LlavaMetaForCausalLM.encode_images``), ``llava/model/multimodal_encoder/clip_encoder.py``
lines 36-47 and 64-96 (``load_text_tower``, ``forward``: CLIP text embeddings of the instruction and
``visual_projection(post_layernorm(features))`` of the layer -2 patches) and ``llava/eval/model_vqa_loader.py``
lines 106-121 (the text: the question line with ``"\\nAnswer the question using a single word or phrase."``
removed; TextVQA's OCR line stays). Training-free.

Per image (X = the 576 layer -2 patch features, E = their projected LLM-input embeddings, ``mm_projector(X)``):

1. Similarity ``S = Ê Êᵀ`` of the L2-normalised E, float32 (N, N).
2. Relevance: CLIP image embeddings ``I = visual_projection(post_layernorm(X))`` and text embeddings ``T`` of the
   instruction (the CLIP tokenizer's ids, not truncated, zero-padded to a multiple of 77 and cut into M windows,
   each through the text tower), both L2-normalised; ``r_i = mean_m(-Î_i · T̂_m)``; then
   ``r = (r - min r + 1e-6) / (max r - min r)``. The official code **negates** the cosine (as TRIM does).
3. Kernel ``L = diag(r) S diag(r)``; greedy fast MAP inference of the DPP for ``budget`` steps: pick
   ``j = argmax d²`` (first index on ties), ``e = (L[j] - cᵀ c_j) / sqrt(d²_j)``, ``d² -= e²``, ``d²_j = -inf``.
4. The picked tokens go to the LLM in raster order (the official code masks the projected sequence; the
   projector acts per token, so projecting the kept tokens gives the same embeddings).

Differences on purpose:

* **Batches.** The official relevance min/max are taken over the whole batch tensor (its loader runs batch
  size 1); here per image, so an image's selection does not depend on its batch neighbours (equal at batch 1).
* **A kernel of lower rank than the budget** (never on LLaVA-1.5-7B: rank up to 576 with 4096-d embeddings;
  but the project's small models have 64- or 128-d LLM embeddings): once the largest remaining ``d²`` falls to
  ``1e-6`` of the largest diagonal entry, no token adds volume and the official update divides by ~0 (then NaN,
  and repeated picks: fewer than ``budget`` tokens). Here the remaining slots go to the unpicked tokens of
  highest relevance (the DPP's quality term), lower index first on ties, so exactly ``budget`` tokens.
* The text tower runs in float32 (as the official code loads it); the vision side in float32 (official: the
  image embeddings in float32, the projected features in fp16 before the float32 similarity).
* The instruction is the question line as the prompt carries it (the dataset's question, TextVQA's OCR line,
  and its answer instruction), with exactly LLaVA's short-answer instruction removed as the official loader does.

The committed fixture ``tests/fixtures/official/cdpruner.json`` holds the official ``encode_images``' kept
indices on seeded inputs of LLaVA-1.5-7B's shapes (embeddings 4096-d, CLIP 768-d); ``tests/test_methods_2025.py``
requires ours to equal them.
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError
from svdprune.params import Text
from svdprune.pruning import EncoderPruner, register

from ._clip import ClipTextImage, check_clip_path
from ._encoder_common import check_budget, check_runtime_budget, gather_tokens

NAME = "cdpruner"
REMOVED_INSTRUCTION = "\nAnswer the question using a single word or phrase."  # model_vqa_loader.py line 109
EXHAUSTED = 1e-6  # remaining d² below this share of the largest diagonal entry: the kernel's rank is used up


def relevance_scores(image_embeds: torch.Tensor, text_embeds: list[torch.Tensor]) -> torch.Tensor:
    """image_embeds: (B, N, P); text_embeds: per image (M, P). -> (B, N) min-max normalised negated relevance."""
    image = image_embeds.float() / image_embeds.float().norm(dim=-1, keepdim=True)
    rows = []
    for b, text in enumerate(text_embeds):
        text = text.float() / text.float().norm(dim=-1, keepdim=True)
        relevance = (-(image[b] @ text.t())).mean(dim=-1)  # (N,)
        rows.append((relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min()))
    return torch.stack(rows)


def dpp_kernel(embeddings: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """embeddings: (B, N, d) projected tokens; relevance: (B, N) -> (B, N, N) r_i * cos(e_i, e_j) * r_j, float32."""
    normalized = embeddings / embeddings.norm(dim=-1, keepdim=True)
    normalized = normalized.float()
    similarity = normalized @ normalized.transpose(1, 2)
    return relevance[:, :, None] * similarity * relevance[:, None, :]


def dpp_greedy(kernel: torch.Tensor, quality: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP inference of the DPP with kernel (B, N, N) -> (B, k) picks in selection order.

    Where the kernel's rank runs out before k picks, the rest are the unpicked tokens of highest ``quality``.
    """
    batch, n, _ = kernel.shape
    rows = torch.arange(batch, device=kernel.device)
    vectors = torch.zeros(k, batch, n, dtype=kernel.dtype, device=kernel.device)  # (k, B, N)
    gains = torch.diagonal(kernel, dim1=1, dim2=2).clone()  # (B, N) d²
    floor = EXHAUSTED * gains.max(dim=-1).values  # (B,)
    picks = torch.empty(batch, k, dtype=torch.long, device=kernel.device)
    exhausted = torch.zeros(batch, dtype=torch.bool, device=kernel.device)
    picked = torch.zeros(batch, n, dtype=torch.bool, device=kernel.device)
    fallback = quality.float().masked_fill(picked, -torch.inf)
    for i in range(k):
        j = gains.argmax(dim=-1)  # (B,) first maximum
        exhausted |= gains[rows, j] <= floor
        if exhausted.any():  # rank used up in some rows: their next pick is by quality
            j = torch.where(exhausted, torch.sort(fallback, dim=-1, descending=True, stable=True).indices[:, 0], j)
        picks[:, i] = j
        picked[rows, j] = True
        fallback = fallback.masked_fill(picked, -torch.inf)
        root = torch.sqrt(gains[rows, j].clamp_min(floor))[:, None]  # exhausted rows are not updated below
        update = (kernel[rows, j] - torch.einsum("tb,tbn->bn", vectors[:i, rows, j], vectors[:i])) / root
        update = torch.where(exhausted[:, None], torch.zeros_like(update), update)
        vectors[i] = update
        gains = gains - update.square()
        gains[rows, j] = -torch.inf
    return picks


def cdpruner_select(embeddings: torch.Tensor, image_embeds: torch.Tensor, text_embeds: list[torch.Tensor],
                    k: int) -> torch.Tensor:
    """CDPruner's kept tokens: (B, N, d), (B, N, P), per image (M, P) -> (B, k) indices, ascending."""
    relevance = relevance_scores(image_embeds, text_embeds)
    picks = dpp_greedy(dpp_kernel(embeddings, relevance), relevance, k)
    return torch.sort(picks, dim=-1).values


@register
class CDPruner(EncoderPruner):
    """Keeps the ``budget`` tokens of the greedy conditional-DPP MAP (relevance x similarity), raster order."""

    name, label, in_paper, table_row = "cdpruner", "CDPruner", False, 70
    needs = frozenset({"clip_text"})

    kind = "encoder"
    question_dependent = True  # the relevance follows the instruction's CLIP text embedding

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"clip_path": Text(default="openai/clip-vit-large-patch14-336"),
              "revision": Text(nullable=True, default=None)}

    def __init__(self, budget: int, clip_path: str = "openai/clip-vit-large-patch14-336",
                 revision: str | None = None):
        self.budget = check_budget(NAME, budget)
        check_clip_path(NAME, clip_path)
        self.clip = ClipTextImage(NAME, clip_path, revision)

    def check(self, lm) -> None:
        self.clip.check(lm)
        check_runtime_budget(NAME, self.budget, lm.num_patches)

    @staticmethod
    def instruction_text(question: str, instruction: str | None) -> str:
        """The prompt's question line with LLaVA's short-answer instruction removed (the official loader's text)."""
        line = question + ("\n" + instruction if instruction else "")
        return line.replace(REMOVED_INSTRUCTION, "")

    @torch.no_grad()
    def reduce(self, features, context):
        check_runtime_budget(NAME, self.budget, features.shape[1])
        if context.questions is None or len(context.questions) != features.shape[0]:
            raise UserError(f"{NAME} needs one question per image")
        embeddings = context.project(features)  # (B, N, d)
        texts = [self.clip.segment_embeds(self.instruction_text(q, context.instruction), features.device)
                 for q in context.questions]
        keep = cdpruner_select(embeddings, self.clip.image_embeds(features), texts, self.budget)
        context.record(kept_indices=keep.tolist())
        return gather_tokens(features, keep)
