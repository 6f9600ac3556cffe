"""Train the ``mini`` model: a small LLaVA-class model (LlavaForConditionalGeneration: CLIP-style vision tower,
LLaVA's 2-layer MLP projector, Llama-style LLM) on the easy-VQA train split, from scratch, offline, seeded.

``scripts/train_mini.py`` is its command line (``--tie-embeddings --present-weight 2 --out <folder>``: both
stages in one run).

The committed checkpoint was made by four runs chained through ``--vision-from`` / ``--init-from``; their
commands are in checkpoints/mini/README.md.

Geometry kept where it matters for pruning: 336 px images, 14 px patches -> CLS + 24 x 24 = 576 image tokens,
features from vision layer -2 with CLS dropped, the vicuna_v1 prompt of LLaVA-1.5 with the answer instruction,
image tokens placed by the same ``tokenizer_image_token`` rule, the same preprocessing (svdprune.prompts).
So every pruning method runs unchanged on it.

Two stages, as LLaVA-1.5 (a pretrained CLIP tower that stays frozen; projector and LLM trained on top of it):

1. Vision tower (``pretrain_vision``): a CLIPVisionModel trained from scratch as a classifier on the train
   images. Targets: each image's shape (3) and colour (8) from CLIP's pooled output (post-LN CLS of the last
   layer), and for every patch token of layer -2 (the layer LLaVA reads) what it lies on: background, or the
   image's shape / colour. Image labels are read off the train questions and answers (``image_labels``); the
   patches a shape covers are read off the pixels (``patch_coverage``: pixels that differ from the image's
   background colour). The per-patch targets are a dense signal (from the image label alone a from-scratch
   tower stayed at 45% on shapes after 800 steps) and keep information local, as in a real CLIP: a patch
   token tells what it lies on, so which tokens a pruning method keeps matters.
2. LLaVA (``train_llava``): the tower frozen and its layer -2 features computed once; projector and LLM trained
   teacher-forced on "<answer></s>" after "ASSISTANT:" (loss on those two tokens only). Token-count
   augmentation: a step keeps all 576 image tokens with probability ``--full-prob``, else a uniformly random
   subset of k tokens in raster order, k log-uniform in [8, 576] (one k per step). Without it the LLM only ever
   saw 576-token prompts and broke on short ones (no EOS, empty answers), whatever tokens were kept; with it an
   encoder-side method is judged on which tokens it keeps. Random subsets favour no method's selection rule.
   The committed checkpoint ties the LLM's input embeddings to its output head (``--tie-embeddings``; Llama's
   ``tie_word_embeddings``) and samples the yes/no questions whose named shape or colour is present more often
   than the train split has them (``--present-weight``: 2x for 2,000 steps, then 4x for 1,500 steps continued
   with ``--init-from``). Untied, the LLM answered those questions from the prior (most name an absent thing)
   instead of comparing the thing named with the thing seen; the model card has the numbers and the commands.

``--questions yes-no`` (a yes/no-only phase) exists for experiments; the committed checkpoint does not use it.

The tokenizer is word-level over the prompt template and easy-VQA's vocabulary, built here and saved with the
checkpoint (works offline). Nothing of the test split is used for training: its questions only add words to the
tokenizer's vocabulary (the same 13 answers and question words as the train split).
"""
from __future__ import annotations

import json
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eval.easyvqa import SHAPES, yes_no_case
from svdprune.processor import write_processor
from svdprune.prompts import ANSWER_INSTRUCTION, SYSTEM, preprocess_image, tokenizer_image_token, vicuna_prompt
from training.common import (  # noqa: F401  (build_word_tokenizer, sample_token_count: the tests read them here)
    GRID, IGNORE, PATCH, SIZE, RunningLog, build_model, build_word_tokenizer, cosine_schedule, optimizer_step,
    sample_token_count,
)

COVERED = 0.15  # a patch counts as lying on the shape from this fraction of its pixels on (0 < f < 0.15: ignored)


def image_labels(questions, answers, image_ids, colors) -> tuple[dict, dict]:
    """Each image's shape and colour as far as its questions tell: from "what shape/colour" answers, from
    "what is the <colour> shape?" (-> colour), and from yes/no questions ("is there (not/no) a triangle?"),
    where a "present" answer names the shape and two "absent" shapes leave the third. Images whose questions
    do not tell are left out (their targets are ignored)."""
    shape_of, color_of = {}, {}
    absent = defaultdict(set)
    for question, answer, image in zip(questions, answers, image_ids):
        words = re.findall(r"\w+", question.lower())
        named_shapes = [w for w in words if w in SHAPES]
        named_colors = [w for w in words if w in colors]
        if answer in SHAPES:
            shape_of[image] = answer
            color_of.update({image: c for c in named_colors})
        elif answer in colors:
            color_of[image] = answer
            shape_of.update({image: s for s in named_shapes})
        else:  # yes / no
            for name in named_shapes + named_colors:
                if yes_no_case(question, answer)[1]:  # the named thing is present
                    (shape_of if name in SHAPES else color_of)[image] = name
                else:
                    absent[image].add(name)
    for image in set(image_ids):
        for labels, vocabulary in ((shape_of, SHAPES), (color_of, colors)):
            left = [name for name in vocabulary if name not in absent[image]]
            if image not in labels and len(left) == 1:
                labels[image] = left[0]
    return shape_of, color_of


def patch_coverage(image) -> torch.Tensor:
    """(576,) fraction of each 14 x 14 patch of the 336 x 336 model input that the shape covers. The background
    is the image's most frequent colour; a pixel is on the shape when it is far from it (L1 > 60 of 765)."""
    from PIL import Image

    pixels = np.asarray(image.convert("RGB")).astype(np.int32)  # (64, 64, 3)
    colors, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    on_shape = np.abs(pixels - colors[counts.argmax()]).sum(-1) > 60
    mask = np.asarray(Image.fromarray(on_shape.astype(np.uint8) * 255).resize((SIZE, SIZE), Image.NEAREST)) > 0
    return torch.from_numpy(mask.reshape(GRID, PATCH, GRID, PATCH).mean((1, 3)).reshape(-1)).float()


def patch_targets(coverage: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-patch class: 0 background (coverage 0), label + 1 on the shape (coverage >= COVERED), else ignored.
    coverage (B, 576), label (B,) with IGNORE for unknown labels -> (B, 576)."""
    on_shape = torch.where(label[:, None] >= 0, label[:, None] + 1, IGNORE)
    return torch.where(coverage >= COVERED, on_shape, torch.where(coverage == 0, 0, IGNORE))


def balanced_weights(questions, answers) -> list[float]:
    """Sampling weight per question: within yes/no questions about colours (and, apart, about shapes) the
    "present" and "absent" cases get equal total weight; other questions weigh 1. easy-VQA asks mostly about
    absent things (train: colour 2,536 present vs 18,122 absent, shape 2,613 vs 5,136), and on the raw mix the
    LLM learns the prior ("no" to "is there a red shape?") before it learns to compare the colour asked
    with the colour seen. (Tried: 1,500 balanced steps from scratch did not teach the comparison either and cost
    accuracy on the unbalanced test split, so ``--balance-yes-no`` is off by default.)"""
    classes = [yes_no_case(q, a) for q, a in zip(questions, answers)]
    counts = defaultdict(int)
    for c in classes:
        counts[c] += 1
    return [1.0 if c is None else counts[(c[0], False)] / counts[c] if c[1] else 1.0 for c in classes]


def present_weights(questions, answers, weight: float) -> list[float]:
    """Sampling weight per question: ``weight`` for yes/no questions whose named shape or colour is in the
    image ("yes" to "is there a red shape?", "no" to "is there not a circle?"), 1 for all others. A partial
    reweighting for fine-tuning: the rare case gets enough gradient to learn the comparison while the
    test-time mix of the other questions is kept."""
    cases = [yes_no_case(q, a) for q, a in zip(questions, answers)]
    return [weight if c is not None and c[1] else 1.0 for c in cases]


def pretrain_vision(tower, pixels, shape_label, color_label, coverage, n_colors: int, args) -> RunningLog:
    """Stage 1. pixels (N, 3, 336, 336) float16, shape_label / color_label (N,) with IGNORE, coverage (N, 576).
    Heads: pooled -> 3 shapes + n_colors colours (8); layer -2 patch tokens -> (background + 3 shapes) and
    (background + n_colors). Augmentation: horizontal flips (image and coverage map)."""
    hidden, n_shapes = tower.config.hidden_size, len(SHAPES)
    image_head = torch.nn.Linear(hidden, n_shapes + n_colors)
    patch_head = torch.nn.Linear(hidden, 1 + n_shapes + 1 + n_colors)
    params = [*tower.parameters(), *image_head.parameters(), *patch_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.05)
    scheduler = cosine_schedule(optimizer, args.vision_steps, args.warmup)
    log = RunningLog("vision", args.log_every)
    tower.train()
    for step in range(args.vision_steps):
        batch = torch.randint(0, len(pixels), (args.vision_batch,))
        x, cover = pixels[batch].float(), coverage[batch].clone()
        flip = torch.rand(len(batch)) < 0.5
        x[flip] = x[flip].flip(-1)
        cover[flip] = cover[flip].view(-1, GRID, GRID).flip(-1).reshape(-1, GRID * GRID)
        out = tower(pixel_values=x, output_hidden_states=True)
        image_logits = image_head(out.pooler_output)  # (B, 3 + n_colors)
        patch_logits = patch_head(out.hidden_states[-2][:, 1:])  # (B, 576, 1 + 3 + 1 + n_colors)
        shapes, colors = shape_label[batch], color_label[batch]
        loss = (F.cross_entropy(image_logits[:, :n_shapes], shapes, ignore_index=IGNORE)
                + F.cross_entropy(image_logits[:, n_shapes:], colors, ignore_index=IGNORE)
                + F.cross_entropy(patch_logits[..., :1 + n_shapes].flatten(0, 1),
                                  patch_targets(cover, shapes).flatten(), ignore_index=IGNORE)
                + F.cross_entropy(patch_logits[..., 1 + n_shapes:].flatten(0, 1),
                                  patch_targets(cover, colors).flatten(), ignore_index=IGNORE))
        optimizer_step(loss, optimizer, scheduler, params)
        log(step, args.vision_steps - 1, loss.item(), lr=scheduler.get_last_lr()[0])
    tower.eval()
    return log


@torch.no_grad()
def layer_features(tower, pixels: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """Layer -2 patch features (N, 576, D) of the frozen tower, CLS dropped (what LLaVA feeds its projector)."""
    return torch.cat([tower(pixel_values=pixels[i:i + batch].float(), output_hidden_states=True).hidden_states[-2][:, 1:]
                      for i in range(0, len(pixels), batch)])


def answer_loss(model, prompts: list[list[int]], answer_ids: list[list[int]], image_embeds: torch.Tensor, pad_id: int):
    """Teacher-forced loss on "<answer></s>". prompts: token ids with k image tokens each, image_embeds (B, k, d)."""
    rows = [p + a for p, a in zip(prompts, answer_ids)]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad_id)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):  # left padding, as at inference
        ids[i, length - len(row):] = torch.tensor(row)
        mask[i, length - len(row):] = 1
    llm = model.model.language_model
    embeds = llm.embed_tokens(ids).masked_scatter((ids == model.config.image_token_id)[..., None], image_embeds)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    hidden = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    logits = model.lm_head(hidden[:, -3:-1])  # predict the answer (from ":") and </s> (from the answer)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(answer_ids).reshape(-1))


def train_llava(model, tokenizer, features: torch.Tensor, qa_by_image: list[list[tuple[str, str, float]]], args,
                rng: random.Random) -> RunningLog:
    """Stage 2: projector + LLM on frozen layer -2 features (N, 576, D), with token-count augmentation.
    qa_by_image: per image, (question, answer, sampling weight) triples."""
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = cosine_schedule(optimizer, args.steps, args.warmup)
    log = RunningLog("llava", args.log_every)
    image_token, prompts = model.config.image_token_id, {}
    model.model.multi_modal_projector.train()
    model.model.language_model.train()
    for step in range(args.steps):
        chosen = rng.sample(range(len(features)), args.images_per_step)
        k = sample_token_count(rng, args.full_prob)
        generator = torch.Generator().manual_seed(rng.getrandbits(31))
        keep = torch.stack([torch.randperm(GRID * GRID, generator=generator)[:k].sort().values for _ in chosen])
        kept = features[chosen].gather(1, keep[..., None].expand(-1, -1, features.shape[-1]))  # (I, k, D)
        image_embeds = model.model.multi_modal_projector(kept).repeat_interleave(args.questions_per_image, dim=0)
        qa = [rng.choices(qa_by_image[i], weights=[w for _, _, w in qa_by_image[i]])[0][:2]
              for i in chosen for _ in range(args.questions_per_image)]
        for question, _ in qa:
            if (question, k) not in prompts:
                prompts[question, k] = tokenizer_image_token(vicuna_prompt(question, ANSWER_INSTRUCTION), tokenizer,
                                                             image_token, k)
        answers = [[tokenizer.convert_tokens_to_ids(a), tokenizer.eos_token_id] for _, a in qa]
        loss = answer_loss(model, [prompts[q, k] for q, _ in qa], answers, image_embeds, tokenizer.pad_token_id)
        optimizer_step(loss, optimizer, scheduler, params)
        log(step, args.steps - 1, loss.item(), tokens=k, lr=scheduler.get_last_lr()[0])
    model.eval()
    return log


# ---------------------------------------------------------------------------------------------- the run


def train(args) -> Path:
    """Both stages (or stage 2 only, from ``args.vision_from`` / ``args.init_from``) and the saved checkpoint
    in ``args.out``; ``args`` carries scripts/train_mini.py's options."""
    import easy_vqa

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    started = time.time()
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    colors = sorted(a for a in easy_vqa.get_answers() if a not in SHAPES + ("yes", "no"))
    template = vicuna_prompt("", ANSWER_INSTRUCTION) + " " + SYSTEM
    tokenizer = build_word_tokenizer([template] + questions + easy_vqa.get_test_questions()[0] + easy_vqa.get_answers())
    model = build_model(tokenizer, args.vision_hidden, args.vision_layers, args.text_hidden, args.text_layers,
                        args.tie_embeddings)

    images = sorted(paths)[:args.images or None]
    pixels = torch.stack([preprocess_image(_open(paths[i])) for i in images]).half()  # (N, 3, 336, 336)
    tower = model.model.vision_tower  # CLIPVisionModel (transformers 5: no .vision_model wrapper)
    if args.vision_from or args.init_from:
        earlier_log, earlier_runs = continue_from(model, args)
        vision_log = RunningLog("vision", args.log_every)
    else:
        earlier_log, earlier_runs = [], []  # the runs this one continues (their args), oldest first
        shape_of, color_of = image_labels(questions, answers, image_ids, colors)
        print(f"{len(images)} train images; shape known for {len(shape_of)}, colour for {len(color_of)}", flush=True)
        coverage = torch.stack([patch_coverage(_open(paths[i])) for i in images])  # (N, 576)
        shape_label = torch.tensor([SHAPES.index(shape_of[i]) if i in shape_of else IGNORE for i in images])
        color_label = torch.tensor([colors.index(color_of[i]) if i in color_of else IGNORE for i in images])
        vision_log = pretrain_vision(tower, pixels, shape_label, color_label, coverage, len(colors), args)
    features = layer_features(tower, pixels)
    del pixels
    qa_by_image = questions_by_image(questions, answers, image_ids, args)
    trained_on = [j for j, image in enumerate(images) if qa_by_image[image]]  # images with questions left
    llava_log = train_llava(model, tokenizer, features[trained_on], [qa_by_image[images[j]] for j in trained_on],
                            args, rng)
    record = {"args": vars(args), "train_seconds": round(time.time() - started, 1),
              "torch_threads": torch.get_num_threads(), "log": earlier_log + vision_log.entries + llava_log.entries,
              "earlier_runs": earlier_runs}
    return save(model, tokenizer, Path(args.out), record)


def _open(path: str):
    from PIL import Image

    return Image.open(path)


def continue_from(model, args) -> tuple[list[dict], list[dict]]:
    """Load ``args.init_from`` (the whole model) or ``args.vision_from`` (its tower) into ``model``; returns the
    earlier runs' log entries (the tower's only when stage 2 starts afresh) and their args, oldest first."""
    from transformers import LlavaForConditionalGeneration

    tower = model.model.vision_tower
    source = Path(args.init_from or args.vision_from)
    trained = LlavaForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    if args.init_from:
        model.load_state_dict(trained.state_dict())
    else:
        tower.load_state_dict(trained.model.vision_tower.state_dict())
    tower.eval()
    previous = json.loads((source / "training_log.json").read_text()) \
        if (source / "training_log.json").exists() else {"log": []}
    earlier_log = previous["log"]
    earlier_runs = previous.get("earlier_runs", []) + ([{k: previous[k] for k in ("args", "train_seconds")}]
                                                       if "args" in previous else [])
    if not args.init_from:  # stage 2 starts afresh: keep only the tower's history
        earlier_log = [e for e in earlier_log if e["stage"] == "vision"]
    return earlier_log, earlier_runs


def questions_by_image(questions: list[str], answers: list[str], image_ids: list[int], args) -> dict[int, list]:
    """image id -> [(question, answer, sampling weight)] of stage 2 (``args.questions``, ``args.balance_yes_no``,
    ``args.present_weight``)."""
    weights = balanced_weights(questions, answers) if args.balance_yes_no else [1.0] * len(questions)
    if args.present_weight != 1.0:
        weights = [w * c for w, c in zip(weights, present_weights(questions, answers, args.present_weight))]
    qa_by_image = defaultdict(list)
    for question, answer, image, weight in zip(questions, answers, image_ids, weights):
        if args.questions == "all" or yes_no_case(question, answer) is not None:
            qa_by_image[image].append((question, answer, weight))
    return qa_by_image


def save(model, tokenizer, out: Path, record: dict) -> Path:
    """The checkpoint: weights, tokenizer, image processor (official LLaVA-1.5 pixels) and chat template
    (``AutoProcessor.from_pretrained(out)``), and training_log.json."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    write_processor(out, tokenizer, image_size=model.config.vision_config.image_size,
                    patch_size=model.config.vision_config.patch_size)
    (out / "training_log.json").write_text(json.dumps(record, indent=2))
    return out
