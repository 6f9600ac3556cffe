"""CLIP's text tower and projections next to LLaVA's vision tower: the text-image scores of TRIM and CDPruner.

llava-hf checkpoints ship CLIP's vision encoder only; the text tower, ``text_projection``, the vision
``post_layernorm`` and ``visual_projection`` come from the CLIP checkpoint LLaVA's tower was taken from
(``clip_path``: a hub id or a local folder in HF format; ``"tiny"`` builds a random tiny CLIP in-process whose
vision width is the LLaVA tower's, :func:`svdprune.models.build_tiny_clip`, seeded, no download). Only those four
modules are kept (float32, moved to the features' device on first use).
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError

TINY_CLIP = "tiny"  # clip_path value: a random tiny CLIP matching the LLaVA tower, built in check()


def check_clip_path(method: str, clip_path) -> str:
    if not isinstance(clip_path, str) or not clip_path:
        raise UserError(f"{method}: method.params.clip_path={clip_path!r}; allowed: a hub id, a local folder "
                        f"or {TINY_CLIP!r} (random, for the tiny model)")
    return clip_path


class ClipTextImage:
    """The CLIP modules one method needs; loaded at construction, or in :meth:`check` for ``clip_path=tiny``."""

    def __init__(self, method: str, clip_path: str, revision: str | None = None):
        self.method = method
        self.clip_path = check_clip_path(method, clip_path)
        self.text_model = None
        if clip_path != TINY_CLIP:
            self._load(clip_path, revision)

    def _load(self, path: str, revision: str | None) -> None:
        from transformers import AutoTokenizer, CLIPModel

        from svdprune.models import in_project

        path = in_project(path)  # a project-relative folder (checkpoints/scenes/clip) works from any directory
        try:
            clip = CLIPModel.from_pretrained(path, revision=revision, dtype=torch.float32)
            self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{self.method}: cannot load CLIP from method.params.clip_path={path!r}: {first}; "
                            "allowed: a CLIP checkpoint (hub id or local folder with config.json, weights, "
                            "tokenizer)") from None
        self._keep(clip.eval())

    def _keep(self, clip) -> None:
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection
        self.post_layernorm = clip.vision_model.post_layernorm
        self.visual_projection = clip.visual_projection
        self.max_position_embeddings = clip.config.text_config.max_position_embeddings
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77),
                              self.max_position_embeddings)
        del clip  # the CLIP vision encoder is not needed: LLaVA's own tower gives the features

    def check(self, lm) -> None:
        """CLIP's post-LayerNorm must fit LLaVA's vision features (same CLIP vision width)."""
        if self.text_model is None:  # clip_path=tiny: built for this tower (seed 0)
            from svdprune.models import build_tiny_clip

            clip, self.tokenizer = build_tiny_clip(lm.vision_tower.config, seed=0)
            self._keep(clip)
        width = self.post_layernorm.normalized_shape[0]
        tower = lm.vision_tower.config.hidden_size
        if width != tower:
            raise UserError(f"{self.method}: method.params.clip_path={self.clip_path!r} has vision width {width}, "
                            f"LLaVA's vision tower {tower}; allowed: the CLIP checkpoint LLaVA's tower comes from")

    def _to(self, device) -> None:
        for module in (self.text_model, self.text_projection, self.post_layernorm, self.visual_projection):
            module.to(device)

    @torch.no_grad()
    def text_embeds(self, texts: list[str], device) -> torch.Tensor:
        """(B, P) CLIP text embeddings of texts truncated to 77 tokens (text_projection of the pooled output),
        float32, unnormalised."""
        self._to(device)
        tokens = self.tokenizer(texts, return_tensors="pt", truncation=True, padding=True, max_length=self.max_length)
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return self.text_projection(self.text_model(**tokens).pooler_output)

    @torch.no_grad()
    def segment_embeds(self, text: str, device) -> torch.Tensor:
        """(M, P) CLIP text embeddings of one text cut, untruncated, into M windows of the text tower's length
        (77): the tokens are padded with id 0 and attention 0 to a multiple of 77 and reshaped (CDPruner's
        ``CLIPVisionTower.forward``); float32, unnormalised."""
        self._to(device)
        tokens = self.tokenizer(text=text, return_tensors="pt")
        length = self.max_position_embeddings
        size = tokens["input_ids"].shape[1]
        pad = length * ((size - 1) // length + 1) - size
        windows = {k: torch.cat([v, v.new_zeros((v.shape[0], pad))], dim=1).reshape(-1, length).to(device)
                   for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return self.text_projection(self.text_model(**windows).pooler_output)

    @torch.no_grad()
    def image_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D) raw layer -2 patch features -> (B, N, P) through post-LayerNorm + visual_projection, fp32."""
        self._to(features.device)
        return self.visual_projection(self.post_layernorm(features.float()))
