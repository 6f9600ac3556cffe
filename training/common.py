"""What the two offline models' training shares (:mod:`training.mini`, :mod:`training.scenes`): the word-level
tokenizer, the small LLaVA-class model, the optimiser step and schedule, the running loss log, and the
token-count augmentation of stage 2."""
from __future__ import annotations

import json
import math
import random
import re
import time

import torch

from svdprune.prompts import IMAGE_PLACEHOLDER

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER]
GRID, PATCH, SIZE = 24, 14, 336  # LLaVA-1.5's 336 px images, 14 px patches -> 24 x 24 image tokens
IGNORE = -100  # label of a position without loss


def build_word_tokenizer(texts: list[str]):
    """Lower-cased word-level tokenizer (words and punctuation), BOS prepended like Llama's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")



def build_model(tokenizer, vision_hidden: int, vision_layers: int, text_hidden: int, text_layers: int,
                tie_embeddings: bool = False):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=4, image_size=SIZE,
                              patch_size=PATCH, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=4 * text_hidden,
                       num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=tie_embeddings)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-2,
                         vision_feature_select_strategy="default",
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
                         tie_word_embeddings=tie_embeddings)
    config._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(config)



def cosine_schedule(optimizer, steps: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))))



def optimizer_step(loss: torch.Tensor, optimizer, scheduler, params) -> None:
    """One training step: backward, gradients clipped to norm 1, optimizer and schedule stepped."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()



class RunningLog:
    """Exponential moving average of the loss, printed and kept every ``every`` steps."""

    def __init__(self, stage: str, every: int):
        self.stage, self.every, self.entries, self.value, self.started = stage, every, [], None, time.time()

    def __call__(self, step: int, last: int, loss: float, **extra) -> None:
        self.value = loss if self.value is None else 0.95 * self.value + 0.05 * loss
        if step % self.every == 0 or step == last:
            entry = {"stage": self.stage, "step": step, "loss": round(self.value, 4),
                     "elapsed_s": round(time.time() - self.started, 1), **extra}
            self.entries.append(entry)
            print(json.dumps(entry), flush=True)



def sample_token_count(rng: random.Random, full_prob: float, low: int = 8, high: int = GRID * GRID) -> int:
    """576 with probability full_prob, else log-uniform in [low, high]."""
    if rng.random() < full_prob:
        return high
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))

