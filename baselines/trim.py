"""TRIM: token reduction by CLIP text-image similarity (Song et al., COLING 2025), **training-free here**.

Reference: FreedomIntelligence/TRIM, ``llava/model/multimodal_encoder/clip_encoder.py``
(``CLIPVisionTower.token_reduction``, ``forward``) and ``llava/eval/model_vqa_loader.py`` (the text is the
question line ``line["text"]``). The paper's numbers come from a LLaVA **finetuned with TRIM**; we apply
TRIM to the stock LLaVA-1.5 weights without any training and say so in every report.

Per image:

1. Image side: the layer -2 patch features (the 576 tokens LLaVA uses, CLS dropped) through CLIP's vision
   post-LayerNorm and ``visual_projection`` in float32.
2. Text side: ``text_embeds`` of CLIP's text tower + ``text_projection`` (unnormalised) for the question
   line as LLaVA's eval loader passes it: the dataset question (for TextVQA with its OCR line) +
   ``"\\n"`` + the dataset's answer instruction (what the prompt carries; ``text_suffix`` overrides it), truncated to the
   CLIP tokenizer's 77 tokens.
3. Similarity = raw dot product (no normalisation, no logit scale); the official code **negates** it
   before the softmax, so it keeps the *least* similar tokens (the authors confirm this is intended,
   TRIM issue #3): ``sign: official`` (default). ``sign: similar`` keeps the most similar ones (ablation).
4. Keep ``budget - 1`` tokens with the highest softmax(sign * similarity), in raster order, and append one
   aggregate token = mean of the *unselected* raw layer -2 features (float32, before the projector).
   **Decision**: the official fixed mode keeps int(576 * ratio) tokens + 1 aggregate; for an exact budget
   k we keep k - 1 + 1, so the LLM sees exactly k tokens. The official auto mode (IQR outliers) gives a
   variable count and is not offered: the engine needs exactly ``budget`` tokens.

Ranking by softmax(sign * s) is ranking by sign * s (the softmax is monotone); we rank by the float32
logits, so tokens whose softmax underflows to 0 (ties in the official code, broken arbitrarily by CUDA
``topk``) stay ordered by similarity here; exact ties go to the lower index.

CLIP weights: ``clip_path`` (a hub id or a local folder in HF format; default
``openai/clip-vit-large-patch14-336``, whose vision tower is the one LLaVA-1.5 froze; llava-hf checkpoints do
not ship the text tower nor the projections; loaded by ``baselines/_clip.py``). ``clip_path: tiny`` builds a random tiny CLIP in-process whose
vision width is the LLaVA tower's (``svdprune.models.build_tiny_clip``, seeded, no download): the ``model=tiny``
config selects it (``configs/model/tiny.yaml`` sets ``clip_path``, which ``configs/method/trim.yaml`` reads),
so that TRIM runs offline on the tiny model; its choices are noise like the tiny model's. Only the text tower, ``text_projection``, the vision
``post_layernorm`` and ``visual_projection`` are kept (float32, moved to the features' device on first use).
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError
from svdprune.params import Choice, Text
from svdprune.pruning import EncoderPruner, register

from ._clip import ClipTextImage, check_clip_path
from ._encoder_common import check_budget, check_runtime_budget, gather_tokens, top_k_raster

NAME = "trim"
SIGNS = {"official": -1.0, "similar": 1.0}


def trim_select(scores: torch.Tensor, features: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scores: (B, N) ranking logits (higher = kept); features: (B, N, D) raw layer -2 features.

    Returns ((B, budget, D) = budget-1 kept tokens in raster order + the mean of the others, kept idx (B, budget-1)).
    """
    batch, n, dim = features.shape
    keep = top_k_raster(scores, budget - 1)  # (B, k-1) ascending
    kept = gather_tokens(features, keep)
    unselected = torch.ones(batch, n, dtype=torch.bool, device=features.device)
    unselected.scatter_(1, keep, False)
    count = unselected.sum(dim=1, keepdim=True)  # (B, 1)
    total = (features.float() * unselected[..., None]).sum(dim=1)  # (B, D)
    aggregate = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    return torch.cat([kept, aggregate[:, None].to(features.dtype)], dim=1), keep


@register
class Trim(EncoderPruner):
    name, label, in_paper, table_row = "trim", "TRIM", True, 30
    needs = frozenset({"clip_text"})
    reaches_all = True
    kind = "encoder"
    question_dependent = True  # the kept tokens follow the question's CLIP text embedding

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"clip_path": Text(default="openai/clip-vit-large-patch14-336"), "revision": Text(nullable=True, default=None),
              "sign": Choice(*SIGNS, default="official"), "text_suffix": Text(nullable=True, default=None)}

    def __init__(self, budget: int, clip_path: str = "openai/clip-vit-large-patch14-336",
                 revision: str | None = None, sign: str = "official",
                 text_suffix: str | None = None):
        self.budget = check_budget(NAME, budget)
        if sign not in SIGNS:
            raise UserError(f"{NAME}: method.params.sign={sign!r}; allowed: {', '.join(SIGNS)}")
        check_clip_path(NAME, clip_path)
        if text_suffix is not None and not isinstance(text_suffix, str):
            raise UserError(f"{NAME}: method.params.text_suffix={text_suffix!r}; allowed: a string or null")
        self.sign = sign
        self.text_suffix = text_suffix  # None: "\n" + the dataset's answer instruction (as the prompt has it)
        self.clip = ClipTextImage(NAME, clip_path, revision)

    def check(self, lm) -> None:
        """CLIP's post-LayerNorm must fit LLaVA's vision features (same CLIP vision width)."""
        self.clip.check(lm)
        check_runtime_budget(NAME, self.budget, lm.num_patches)

    def texts(self, questions: list[str], instruction: str | None = None) -> list[str]:
        """The question lines as LLaVA's loader passes them to TRIM: question + "\n" + answer instruction."""
        suffix = self.text_suffix if self.text_suffix is not None else ("\n" + instruction if instruction else "")
        return [q + suffix for q in questions]

    @torch.no_grad()
    def similarity(self, features: torch.Tensor, questions: list[str], instruction: str | None = None) -> torch.Tensor:
        """(B, N) raw dot products between each patch embedding and its question's text embedding."""
        text = self.clip.text_embeds(self.texts(questions, instruction), features.device)  # (B, P)
        return torch.einsum("bnp,bp->bn", self.clip.image_embeds(features), text)

    @torch.no_grad()
    def reduce(self, features, context):
        check_runtime_budget(NAME, self.budget, features.shape[1])
        if len(context.questions) != features.shape[0]:
            raise ValueError(f"TRIM needs one question per image: {len(context.questions)} for {features.shape[0]}")
        scores = SIGNS[self.sign] * self.similarity(features, list(context.questions), context.instruction)
        out, keep = trim_select(scores, features, self.budget)
        context.record(kept_indices=keep.tolist())
        return out
