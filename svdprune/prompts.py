"""LLaVA-1.5 inputs exactly as the official evaluation builds them: vicuna_v1 prompt, image tokens, pixels.

References (LLaVA repo): ``llava/conversation.py`` (conv_vicuna_v1, sep=' ', sep2='</s>'),
``llava/mm_utils.py`` (``tokenizer_image_token``, ``expand2square``), ``llava/eval/model_vqa_loader.py``.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_PLACEHOLDER = "<image>"
ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def vicuna_prompt(question: str, instruction: str | None = ANSWER_INSTRUCTION) -> str:
    """The vicuna_v1 single-turn prompt with the image first, as ``model_vqa_loader`` builds it.

    ``question`` is the dataset's question line (for TextVQA already carrying the OCR line).
    """
    user = f"{IMAGE_PLACEHOLDER}\n{question}"
    if instruction:
        user = f"{user}\n{instruction}"
    return f"{SYSTEM} USER: {user} ASSISTANT:"


def vicuna_question(tokenizer, suffix_ids: list[int]) -> str:
    """The question of a vicuna_v1 prompt from the ids after its image: the user turn up to " ASSISTANT:" (exact when
    the tokenizer's decode inverts its encode)."""
    text = tokenizer.decode(suffix_ids, skip_special_tokens=True)
    text = text[:text.rfind("ASSISTANT:")] if "ASSISTANT:" in text else text
    return text.strip()


def vicuna_answer(tokenizer, prompt: str, continuation: str) -> str:
    """A vicuna_v1 prompt followed by the assistant turn holding ``continuation`` (lmms-eval's own llava model's
    loglikelihood text: prompt + " " + continuation + "</s>")."""
    return f"{prompt} {continuation}{tokenizer.eos_token or '</s>'}"


def tokenizer_image_token(prompt: str, tokenizer, image_token_id: int, num_image_tokens: int) -> list[int]:
    """Token ids of ``prompt`` with ``<image>`` replaced by ``num_image_tokens`` image-token ids.

    Same rule as LLaVA's ``tokenizer_image_token``: each text chunk around ``<image>`` is tokenised on
    its own (so a sentencepiece tokenizer puts its prefix-space token at the start of the second chunk),
    the first chunk keeps its BOS and every later chunk drops it.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    if len(chunks) != 2:
        raise ValueError(f"prompt must contain exactly one {IMAGE_PLACEHOLDER}, found {len(chunks) - 1}")
    bos = tokenizer.bos_token_id
    offset = 1 if chunks[0] and chunks[0][0] == bos else 0
    ids = list(chunks[0]) + [image_token_id] * num_image_tokens + list(chunks[1][offset:])
    assert ids.count(image_token_id) == num_image_tokens, "image token id also produced by the text"
    return ids


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad to a square canvas of ``background`` colour, image centred (LLaVA's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def preprocess_image(image: Image.Image, size: int = 336, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """LLaVA-1.5 ``image_aspect_ratio='pad'``: pad to square with the mean colour, resize to size x size
    (bicubic; no crop is left to do on a square), scale to [0, 1], normalise. Returns (3, size, size) float32.
    """
    image = image.convert("RGB")
    background = tuple(int(m * 255) for m in mean)  # (122, 116, 104) for CLIP
    image = expand_to_square(image, background)
    image = image.resize((size, size), resample=Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())
