"""Train the ``mini`` model: a small LLaVA-class model (LlavaForConditionalGeneration: CLIP-style vision tower,
LLaVA's 2-layer MLP projector, Llama-style LLM) on easy-VQA, from scratch, offline, with a fixed seed.

    python scripts/train_mini.py --out checkpoints/mini

Geometry kept where it matters for pruning: 336 px images, 14 px patches -> CLS + 24 x 24 = 576 image tokens,
features from vision layer -2 with CLS dropped, the vicuna_v1 prompt of LLaVA-1.5 with the answer instruction,
image tokens placed by the same ``tokenizer_image_token`` rule. So every pruning method runs unchanged on it.
Training uses the same preprocessing and prompt code as inference (svdprune.prompts), teacher-forced on
"<answer></s>" after "ASSISTANT:", loss on those two tokens only. The tokenizer is word-level over the
prompt template and easy-VQA's vocabulary, built here and saved with the checkpoint (works offline).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from svdprune.prompts import ANSWER_INSTRUCTION, IMAGE_PLACEHOLDER, SYSTEM, preprocess_image, \
    tokenizer_image_token, vicuna_prompt

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER]


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


SHAPES = ("circle", "rectangle", "triangle")


def question_weight(question: str, answer: str, shape_weight: float) -> float:
    """Sampling weight: ``shape_weight`` for questions whose answer is a shape or that name one."""
    about_shape = answer in SHAPES or any(shape in question for shape in SHAPES)
    return shape_weight if about_shape else 1.0


def build_model(tokenizer, vision_hidden: int, vision_layers: int, text_hidden: int, text_layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=4, image_size=336, patch_size=14,
                              projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=4 * text_hidden,
                       num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-2,
                         vision_feature_select_strategy="default",
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER))
    config._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(config)


def vision_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Layer -2 patch features (B, 576, D), running only the layers LLaVA uses (the last one is unused)."""
    tower = model.model.vision_tower  # CLIPVisionModel (transformers 5: no .vision_model wrapper)
    hidden = tower.pre_layrnorm(tower.embeddings(pixels))
    for layer in tower.encoder.layers[:-1]:
        hidden = layer(hidden, attention_mask=None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden[:, 1:]


def batch_loss(model, tokenizer, pixels, questions, answers, per_image: int):
    """Teacher-forced loss on "<answer></s>" for questions grouped per image (per_image questions each)."""
    image_token = model.config.image_token_id
    features = model.model.multi_modal_projector(vision_features(model, pixels))  # (I, 576, d)
    features = features.repeat_interleave(per_image, dim=0)  # (B, 576, d)
    rows, targets = [], []
    for question, answer in zip(questions, answers):
        prompt = tokenizer_image_token(vicuna_prompt(question, ANSWER_INSTRUCTION), tokenizer, image_token, 576)
        answer_ids = [tokenizer.convert_tokens_to_ids(answer), tokenizer.eos_token_id]
        rows.append(prompt + answer_ids)
        targets.append(answer_ids)
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row)
        mask[i, length - len(row):] = 1
    llm = model.model.language_model
    embeds = llm.embed_tokens(ids).masked_scatter((ids == image_token)[..., None], features)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    hidden = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    logits = model.lm_head(hidden[:, -3:-1])  # predict answer (from "ASSISTANT:" ":") and </s> (from answer)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="checkpoints/mini")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--images-per-step", type=int, default=8)
    parser.add_argument("--questions-per-image", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--text-hidden", type=int, default=128)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--shape-weight", type=float, default=1.0,
                        help="sampling weight of questions about shapes (answer a shape, or naming one) vs the rest")
    parser.add_argument("--init", default=None,
                        help="continue from this checkpoint folder (its tokenizer and architecture are kept)")
    args = parser.parse_args()

    import easy_vqa
    from PIL import Image

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    by_image = defaultdict(list)
    for q, a, i in zip(questions, answers, image_ids):
        by_image[i].append((q, a))
    if args.init:
        from transformers import AutoTokenizer, LlavaForConditionalGeneration

        tokenizer = AutoTokenizer.from_pretrained(args.init)
        model = LlavaForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32, attn_implementation="sdpa")
    else:
        template = vicuna_prompt("", ANSWER_INSTRUCTION) + " " + SYSTEM
        tokenizer = build_word_tokenizer([template] + questions + easy_vqa.get_test_questions()[0]
                                         + easy_vqa.get_answers())
        model = build_model(tokenizer, args.vision_hidden, args.vision_layers, args.text_hidden, args.text_layers)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = lambda step: min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    image_order = sorted(by_image)
    log, started, running = [], time.time(), None
    for step in range(args.steps):
        chosen = random.sample(image_order, args.images_per_step)
        pixels = torch.stack([preprocess_image(Image.open(paths[i])) for i in chosen])
        qa = [random.choices(by_image[i], weights=[question_weight(q, a, args.shape_weight) for q, a in by_image[i]])[0]
              for i in chosen for _ in range(args.questions_per_image)]
        loss = batch_loss(model, tokenizer, pixels, [q for q, _ in qa], [a for _, a in qa], args.questions_per_image)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % args.log_every == 0 or step == args.steps - 1:
            entry = {"step": step, "loss": round(running, 4), "lr": scheduler.get_last_lr()[0],
                     "elapsed_s": round(time.time() - started, 1)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
         "crop_size": 336, "size": 336}, indent=2))
    history = []
    if args.init and (Path(args.init) / "training_log.json").exists():
        previous = json.loads((Path(args.init) / "training_log.json").read_text())
        history = previous.get("stages", [previous])
    stage = {"args": vars(args), "log": log, "train_seconds": time.time() - started}
    (out / "training_log.json").write_text(json.dumps({"stages": history + [stage]}, indent=2))
    print(f"saved to {out} after {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
