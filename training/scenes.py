"""Train the ``scenes`` model: a small LLaVA-class model (LlavaForConditionalGeneration, the classes of
LLaVA-1.5) on the train split of the procedural scenes benchmark (eval/scenes.py), from scratch, offline, seeded.

``scripts/train_scenes.py`` is its command line (``--out checkpoints/scenes --threads 2``).

Same recipe and pieces as the mini model (training/common.py: tokenizer, model builder, stage-2 trainer
with token-count augmentation), with a deeper tower so that every encoder-side method reaches every budget:

1. Vision tower (``pretrain_tower``, loss ``tower_loss``): a CLIPVisionModel (7 layers: ToMe merges in
   layers 0..5, and six halvings of 576 reach 9 <= 16) trained as a dense classifier on the layer -2 patch
   tokens (the layer LLaVA reads): each object's shape from the mean of its patch tokens; per patch the colour
   and shape of the object it lies on (object patches weighted up: they are ~5% of the patches), whether it
   holds an object's centre (for counting), its grid position (for relations); from CLIP's pooled output, the
   scene's (colour, shape) pairs. Horizontal flips. Held-out train scenes are probed every ``--probe-every``
   steps; checkpointed to ``<out>/stage1.pt`` (a rerun resumes there).
1b. TRIM's CLIP (``train_clip_text``): the tower copied into a CLIPModel, frozen, and a text tower trained
   contrastively on the scenes' captions (locked-image tuning); saved to ``<out>/clip``.
2. LLaVA (``train_llava``, training.mini's stage 2 with a shared prefix): tower frozen, layer -2 features
   computed once, projector + LLM trained teacher-forced on "<answer></s>", ``--full-prob`` of the steps on
   all 576 tokens, the others on a random raster-ordered subset of k tokens (k log-uniform in [8, 576]).
   Random subsets favour no method's selection rule. The image comes before the question in the vicuna_v1
   prompt, so under causal attention the prefix "<s> SYSTEM USER: <image x k>" of an image is the same for all
   its questions: it runs once per image and its KV cache is repeated for the questions (``shared_prefix_loss``;
   the loss equals training.mini.answer_loss on the full rows, tested), which saves most of the LLM's compute.

Nothing of the test split is trained on (its scenes are drawn from another seed).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eval.scenes import (ANSWERS, COLORS, COVER, GRID, PATCH, SHAPES, describe, patch_labels, patch_shares,
                         render, scene, scenes)
from svdprune.models import clip_like
from svdprune.processor import write_processor
from svdprune.prompts import (ANSWER_INSTRUCTION, CLIP_MEAN, CLIP_STD, SYSTEM, tokenizer_image_token,
                               vicuna_prompt)
from training.common import (IGNORE, RunningLog, build_model, build_word_tokenizer, cosine_schedule,
                             optimizer_step, sample_token_count)

PAIRS = [(c, s) for c in COLORS for s in SHAPES]


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 336, 336, 3) -> CLIP-normalised float32 (B, 3, 336, 336); equals svdprune.prompts.preprocess_image
    on a 336 x 336 image (no padding, no resize)."""
    x = pixels.permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


MAX_OBJECTS = 6  # eval.scenes places 3..6 objects


def scene_targets(scene) -> dict[str, np.ndarray]:
    """Stage-1 targets of one scene. Per patch (576,): ``color`` and ``shape`` class (0 background, 1 + index
    on an object, IGNORE when partly covered), ``centre`` (1 on the patch holding an object's centre) and
    ``object`` (index of the object covering it, -1 if none); per object (MAX_OBJECTS,): ``object_shape``
    (shape index, IGNORE for absent objects); ``pairs``: the scene's (colour, shape) pairs, multi-hot (24,)."""
    owner, share = patch_labels(scene)
    color = np.array([1 + list(COLORS).index(o.color) for o in scene.objects])
    shape = np.array([1 + SHAPES.index(o.shape) for o in scene.objects])
    covered = share >= COVER
    centre = np.zeros(GRID * GRID, dtype=np.int64)
    for o in scene.objects:
        cx, cy = o.center
        centre[int(cy) // PATCH * GRID + int(cx) // PATCH] = 1
    object_shape = np.full(MAX_OBJECTS, IGNORE, dtype=np.int64)
    object_shape[:len(scene.objects)] = shape - 1
    pairs = np.zeros(len(PAIRS), dtype=np.float32)
    for o in scene.objects:
        pairs[PAIRS.index((o.color, o.shape))] = 1
    return {"color": np.where(covered, color[owner.clip(0)], np.where(share == 0, 0, IGNORE)),
            "shape": np.where(covered, shape[owner.clip(0)], np.where(share == 0, 0, IGNORE)),
            "centre": centre, "object": np.where(covered, owner, -1), "object_shape": object_shape,
            "pairs": pairs}


PER_PATCH = ("color", "shape", "centre", "object")  # flipped with the image


def stack_targets(scene_list) -> dict[str, torch.Tensor]:
    """scene_targets of several scenes stacked along a first axis (N, ...)."""
    targets = [scene_targets(s) for s in scene_list]
    return {key: torch.from_numpy(np.stack([t[key] for t in targets])) for key in targets[0]}


def flip_patches(t: torch.Tensor) -> torch.Tensor:
    """(B, 576) per-patch values of horizontally flipped images."""
    return t.view(-1, GRID, GRID).flip(-1).reshape(t.shape)


N_COLOR, N_SHAPE = 1 + len(COLORS), 1 + len(SHAPES)  # background + classes
PATCH_OUTPUTS = N_COLOR + N_SHAPE + 1 + 2  # colour, shape, object centre, (row, col)


def object_means(features: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """features (B, 576, D), objects (B, 576) object index or -1 -> (B, MAX_OBJECTS, D) mean feature of each
    object's patches (zeros for absent objects)."""
    member = (objects[:, None, :] == torch.arange(MAX_OBJECTS)[None, :, None]).float()  # (B, O, 576)
    return member @ features / member.sum(-1, keepdim=True).clamp_min(1)


def tower_loss(features: torch.Tensor, pooled: torch.Tensor, heads: dict, t: dict, background_weight: float
               ) -> torch.Tensor:
    """Stage-1 loss on the layer -2 patch features (B, 576, D) and CLIP's pooled output (B, D); t: the batch's
    targets (scene_targets, stacked).

    * Object shape from the mean of the object's patch features (``heads["object"]``). A per-patch shape target
      alone left the tower shape-blind (36.7%, then chance again with object patches weighted): a patch
      inside an object is one flat colour, and telling shapes apart needs the patches on its outline together.
      A mean over the object's patches asks only that each outline patch tell what edge it holds -- the
      information an LLM reading those tokens needs.
    * Per patch (``heads["patch"]``): colour and shape cross-entropy averaged over the object patches plus
      ``background_weight`` x its average over background patches (objects cover ~5% of the patches), the
      object centre as a balanced binary loss (what counting needs), the grid position as a regression
      (what the relation questions need).
    * The scene's (colour, shape) pairs from the pooled output, multi-label (``heads["pairs"]``): the CLS
      token attends to the objects as CLIP's does to salient content.
    """
    patch = heads["patch"](features)  # (B, 576, PATCH_OUTPUTS)
    colors, shapes, centres = t["color"], t["shape"], t["centre"]
    ce = (F.cross_entropy(patch[..., :N_COLOR].flatten(0, 1), colors.flatten(), ignore_index=IGNORE,
                          reduction="none")
          + F.cross_entropy(patch[..., N_COLOR:N_COLOR + N_SHAPE].flatten(0, 1), shapes.flatten(),
                            ignore_index=IGNORE, reduction="none"))  # (B * 576,)
    on_object, on_background = colors.flatten() > 0, colors.flatten() == 0
    centre = F.binary_cross_entropy_with_logits(patch[..., -3].flatten(), centres.flatten().float(),
                                                reduction="none")
    is_centre = centres.flatten() == 1
    grid = torch.arange(GRID * GRID)
    position = torch.stack([grid // GRID, grid % GRID], -1).float() / (GRID - 1)  # (576, 2) row, col in [0, 1]
    object_logits = heads["object"](object_means(features, t["object"]))  # (B, MAX_OBJECTS, 4)
    return (2 * F.cross_entropy(object_logits.flatten(0, 1), t["object_shape"].flatten(), ignore_index=IGNORE)
            + ce[on_object].mean() + background_weight * ce[on_background].mean()
            + centre[is_centre].mean() + centre[~is_centre].mean()
            + 10 * F.mse_loss(patch[..., -2:], position.expand_as(patch[..., -2:]))
            + F.binary_cross_entropy_with_logits(heads["pairs"](pooled), t["pairs"]))


@torch.no_grad()
def probe_tower(tower, heads: dict, pixels: torch.Tensor, t: dict) -> dict[str, float]:
    """Held-out accuracy of the stage-1 heads: colour and shape per object patch, shape per object (mean of its
    patches), object centres (recall of the top-scoring patches, as many as there are objects)."""
    was_training = tower.training
    tower.eval()
    features = torch.cat([tower(pixel_values=normalise(pixels[i:i + 16]), output_hidden_states=True)
                          .hidden_states[-2][:, 1:] for i in range(0, len(pixels), 16)])
    tower.train(was_training)
    patch = heads["patch"](features)
    on_object = t["color"] > 0
    color_ok = patch[..., :N_COLOR].argmax(-1) == t["color"]
    shape_ok = patch[..., N_COLOR:N_COLOR + N_SHAPE].argmax(-1) == t["shape"]
    objects = heads["object"](object_means(features, t["object"])).argmax(-1)  # (N, MAX_OBJECTS)
    present = t["object_shape"] != IGNORE
    hits = [t["centre"][i][patch[i, :, -3].topk(int(t["centre"][i].sum())).indices].float().mean().item()
            for i in range(len(patch))]
    return {"color": round(color_ok[on_object].float().mean().item(), 4),
            "shape": round(shape_ok[on_object].float().mean().item(), 4),
            "object_shape": round((objects == t["object_shape"])[present].float().mean().item(), 4),
            "centre": round(float(np.mean(hits)), 4)}


def pretrain_tower(tower, pixels, targets: dict, args, checkpoint: Path, probe=None
                   ) -> tuple[RunningLog, torch.nn.ModuleDict]:
    """Stage 1 (see the module docstring and ``tower_loss``). pixels uint8 (N, 336, 336, 3); targets:
    stack_targets of the N scenes. ``probe``: held-out (pixels, targets) checked every ``probe_every`` steps.
    Returns (the log, the trained heads)."""
    hidden = tower.config.hidden_size
    heads = torch.nn.ModuleDict({"patch": torch.nn.Linear(hidden, PATCH_OUTPUTS),
                                 "object": torch.nn.Linear(hidden, len(SHAPES)),
                                 "pairs": torch.nn.Linear(hidden, len(PAIRS))})
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.05)
    scheduler = cosine_schedule(optimizer, args.vision_steps, args.warmup)
    log, start = RunningLog("vision", args.log_every), 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        for module, key in ((tower, "tower"), (heads, "heads"), (optimizer, "optimizer"), (scheduler, "scheduler")):
            module.load_state_dict(state[key])
        start, log.entries = state["step"] + 1, state["log"]
        torch.set_rng_state(state["rng"])
        print(f"resumed stage 1 at step {start}", flush=True)
    tower.train()
    for step in range(start, args.vision_steps):
        batch = torch.randint(0, len(pixels), (args.vision_batch,))
        x = normalise(pixels[batch])
        t = {key: value[batch].clone() for key, value in targets.items()}
        flip = torch.rand(len(batch)) < 0.5
        x[flip] = x[flip].flip(-1)
        for key in PER_PATCH:
            t[key][flip] = flip_patches(t[key][flip])
        out = tower(pixel_values=x, output_hidden_states=True)
        loss = tower_loss(out.hidden_states[-2][:, 1:], out.pooler_output, heads, t, args.background_weight)
        optimizer_step(loss, optimizer, scheduler, params)
        extra = {}
        if probe is not None and (step % args.probe_every == 0 or step == args.vision_steps - 1):
            extra = probe_tower(tower, heads, *probe)
        log(step, args.vision_steps - 1, loss.item(), lr=scheduler.get_last_lr()[0], **extra)
        if (step + 1) % args.save_every == 0 or step == args.vision_steps - 1:
            torch.save({"tower": tower.state_dict(), "heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "log": log.entries,
                        "rng": torch.get_rng_state()}, checkpoint)
    tower.eval()
    return log, heads


@torch.no_grad()
def tower_features(tower, pixels: torch.Tensor, batch: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Of the frozen tower: layer -2 patch features (N, 576, D), CLS dropped (what LLaVA reads), and CLIP's
    pooled output (N, D) (post-LayerNorm CLS of the last layer, CLIP's image embedding before its projection)."""
    features, pooled = [], []
    for i in range(0, len(pixels), batch):
        out = tower(pixel_values=normalise(pixels[i:i + batch]), output_hidden_states=True)
        features.append(out.hidden_states[-2][:, 1:])
        pooled.append(out.pooler_output)
    return torch.cat(features), torch.cat(pooled)


# ---------------------------------------------------------------------------------------------- CLIP text tower


def build_clip_word_tokenizer(texts: list[str]):
    """``build_word_tokenizer`` made CLIP-like (``svdprune.models.clip_like``: ``<|endoftext|>`` ends every text,
    77 tokens at most)."""
    return clip_like(build_word_tokenizer(texts))


def train_clip_text(tower, pooled: torch.Tensor, captions: list[str], tokenizer, args,
                    probe: tuple[torch.Tensor, list[str]] | None = None):
    """Stage 1b, TRIM's CLIP: a CLIPModel whose vision side is the trained tower (copied, frozen) and whose text
    tower, ``text_projection`` and ``visual_projection`` are trained contrastively (CLIP's symmetric InfoNCE
    with a learned temperature) on the scenes' captions (``eval.scenes.describe``: the objects left to right)
    against the tower's pooled image output -- locked-image tuning (LiT, Zhai et al. 2022), one of CLIP's own
    training recipes. pooled: (N, D) of the train scenes, captions: N strings. ``probe``: held-out (pooled,
    captions) whose image -> caption retrieval accuracy is logged. Returns (CLIPModel in eval mode, log)."""
    from transformers import CLIPConfig, CLIPModel

    hidden = args.clip_text_hidden
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=args.clip_text_layers, num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=tower.config.to_dict(), projection_dim=args.clip_projection)
    clip = CLIPModel(config)
    clip.vision_model.load_state_dict(tower.state_dict())  # CLIPVisionModel holds the transformer itself
    clip.vision_model.requires_grad_(False)
    params = [*clip.text_model.parameters(), *clip.text_projection.parameters(),
              *clip.visual_projection.parameters(), clip.logit_scale]
    optimizer = torch.optim.AdamW(params, lr=args.clip_lr, weight_decay=0.01)
    scheduler = cosine_schedule(optimizer, args.clip_steps, args.warmup)
    tokens = tokenizer(captions, padding=True, return_tensors="pt")
    log = RunningLog("clip", args.log_every)

    def embed(pooled_rows, ids, mask):  # unit image and text embeddings (B, P)
        image = F.normalize(clip.visual_projection(pooled_rows), dim=-1)
        text = F.normalize(clip.text_projection(clip.text_model(input_ids=ids, attention_mask=mask).pooler_output),
                           dim=-1)
        return image, text

    clip.train()
    for step in range(args.clip_steps):
        batch = torch.randperm(len(pooled))[:args.clip_batch]
        image, text = embed(pooled[batch], tokens["input_ids"][batch], tokens["attention_mask"][batch])
        logits = clip.logit_scale.exp() * image @ text.T  # (B, B)
        target = torch.arange(len(batch))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer_step(loss, optimizer, scheduler, params)
        with torch.no_grad():
            clip.logit_scale.clamp_(0, 4.6052)  # CLIP's cap: temperature >= 1 / 100
        extra = {}
        if probe is not None and (step % args.probe_every == 0 or step == args.clip_steps - 1):
            with torch.no_grad():
                held = tokenizer(probe[1], padding=True, return_tensors="pt")
                image, text = embed(probe[0], held["input_ids"], held["attention_mask"])
                extra = {"retrieval": round(((image @ text.T).argmax(-1) == torch.arange(len(image)))
                                            .float().mean().item(), 4)}
        log(step, args.clip_steps - 1, loss.item(), lr=scheduler.get_last_lr()[0], **extra)
    return clip.eval(), log


# ---------------------------------------------------------------------------------------------- stage 2


def split_prompt(question: str, tokenizer, image_token: int, k: int) -> tuple[list[int], list[int]]:
    """The prompt's token ids with k image tokens, cut after the last image token: (prefix, suffix)."""
    ids = tokenizer_image_token(vicuna_prompt(question, ANSWER_INSTRUCTION), tokenizer, image_token, k)
    cut = max(i for i, t in enumerate(ids) if t == image_token) + 1
    return ids[:cut], ids[cut:]


def shared_prefix_loss(model, prefix: list[int], suffixes: list[list[int]], answer_ids: list[list[int]],
                       image_embeds: torch.Tensor, per_image: int, token_words: torch.Tensor | None = None,
                       token_words_weight: float = 0.0) -> torch.Tensor:
    """Teacher-forced loss on "<answer></s>" with the prefix run once per image. prefix: ids with k image
    tokens (the same for every image), image_embeds (I, k, d); suffixes / answer_ids: I * per_image rows, the
    questions of image i at rows i * per_image ... (i + 1) * per_image - 1. Suffixes are right-padded: under
    causal attention the padding after a row's last token changes nothing before it.

    ``token_words`` (I, k, 2): per kept image token the word ids of its object's colour and shape (-1 on
    background): adds ``token_words_weight`` x the LM head's cross-entropy, at each object token, against
    those two words (half each) -- see ``train_llava``."""
    llm = model.model.language_model
    ids = torch.tensor(prefix).expand(len(image_embeds), -1)
    is_image = ids == model.config.image_token_id
    embeds = llm.embed_tokens(ids).masked_scatter(is_image[..., None], image_embeds)
    prefix_out = llm(inputs_embeds=embeds, use_cache=True)
    cache = prefix_out.past_key_values
    aux = 0.0
    if token_words is not None and token_words_weight > 0:
        on_object = token_words[..., 0] >= 0  # (I, k)
        if on_object.any():
            image_hidden = prefix_out.last_hidden_state[is_image].view(*token_words.shape[:2], -1)  # (I, k, d)
            logp = F.log_softmax(model.lm_head(image_hidden[on_object]), -1)  # (n, V)
            words = token_words[on_object]  # (n, 2)
            aux = -0.5 * (logp.gather(1, words[:, :1]) + logp.gather(1, words[:, 1:])).mean()
    cache.batch_repeat_interleave(per_image)
    rows = [s + a for s, a in zip(suffixes, answer_ids)]
    length = max(map(len, rows))
    suffix = torch.tensor([row + [row[-1]] * (length - len(row)) for row in rows])  # (B, S) right-padded
    positions = torch.arange(len(prefix), len(prefix) + length).expand(len(rows), -1)
    hidden = llm(inputs_embeds=llm.embed_tokens(suffix), cache=cache, position_ids=positions,
                 use_cache=True).last_hidden_state  # (B, S, d)
    ends = torch.tensor([len(row) for row in rows])
    picked = torch.stack([hidden[torch.arange(len(rows)), ends - 3], hidden[torch.arange(len(rows)), ends - 2]], 1)
    logits = model.lm_head(picked)  # predict the answer (from ":") and </s> (from the answer)
    answer = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(answer_ids).reshape(-1))
    return answer + token_words_weight * aux


@torch.no_grad()
def probe_llava(model, tokenizer, features: torch.Tensor, qa_by_image: list[list[tuple[str, str]]],
                k: int | None = None, seed: int = 0) -> float:
    """Share of held-out questions whose answer word is the most likely next token after the prompt, with all
    the image tokens (``k`` None) or a seeded random subset of ``k`` (raster order). features: (M, 576, D)."""
    was_training = model.training
    model.eval()
    llm, image_token = model.model.language_model, model.config.image_token_id
    generator = torch.Generator().manual_seed(seed)
    n = features.shape[1]
    kept_count = n if k is None else k
    correct = total = 0
    for image_features, qa in zip(features, qa_by_image):
        keep = torch.randperm(n, generator=generator)[:kept_count].sort().values
        image = model.model.multi_modal_projector(image_features[keep])  # (k, d)
        for question, answer in qa:
            ids = torch.tensor(tokenizer_image_token(vicuna_prompt(question, ANSWER_INSTRUCTION), tokenizer,
                                                     image_token, kept_count))
            embeds = llm.embed_tokens(ids).masked_scatter((ids == image_token)[:, None], image)
            logits = model.lm_head(llm(inputs_embeds=embeds[None]).last_hidden_state[0, -1])
            correct += int(logits.argmax().item() == tokenizer.convert_tokens_to_ids(answer))
            total += 1
    model.train(was_training)
    return round(correct / max(total, 1), 4)


def subsets_holding(patches: list[list[int]], extra: int, generator: torch.Generator) -> torch.Tensor:
    """One token subset per row for the evidence steps: the row's patches (every patch its question's objects
    touch), plus random other patches so that all rows keep the same k = (longest list) + ``extra``; raster
    order. Returns (rows, k) long."""
    k = max(map(len, patches)) + extra
    rows = []
    for mine in patches:
        others = torch.ones(GRID * GRID, dtype=torch.bool)
        others[mine] = False
        pool = others.nonzero().flatten()
        fill = pool[torch.randperm(len(pool), generator=generator)[:k - len(mine)]]
        rows.append(torch.cat([torch.tensor(mine, dtype=torch.long), fill]).sort().values)
    return torch.stack(rows)


def train_llava(model, tokenizer, features: torch.Tensor, qa_by_image: list[list[tuple[str, str]]], args,
                rng: random.Random, checkpoint: Path, probe=None, patch_words: torch.Tensor | None = None
                ) -> RunningLog:
    """Stage 2 on frozen layer -2 features (N, 576, D): each step ``images_per_step`` images, one k, and
    ``questions_per_image`` questions per image drawn from its (question, answer) pairs. Checkpointed every
    ``save_every`` steps to ``checkpoint`` (resumed from there). ``probe``: held-out (features, qa_by_image)
    whose next-token accuracy with all tokens and with 16 random ones is logged every ``llava_probe_every``.

    qa_by_image: per image its (question, answer, evidence patches) -- the patches the question's objects touch.

    Evidence steps (probability ``evidence_prob``, decayed linearly to a fifth of it over the run): one
    question per image, whose image keeps the patches of the question's objects plus 0..``evidence_extra``
    random others (``subsets_holding``) -- a curriculum from "the answer is in the tokens you see" to "find
    it among 576". Without them the LLM stayed at the answer priors (38% on held-out scenes after 1,000 steps,
    the same with all tokens and with 16 random ones; also with every object's patches kept): it attended to
    the image tokens evenly, and an even mix of 576 tokens of which ~5% lie on objects carries almost none of
    the evidence, so nothing taught it where to look. The other steps are random subsets (and all 576 tokens)
    as in train_mini, so the model also learns to find the evidence among all tokens and to answer without it
    (from the priors)."""
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = cosine_schedule(optimizer, args.steps, args.warmup)
    log, start = RunningLog("llava", args.log_every), 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, log.entries = state["step"] + 1, state["log"]
        rng.setstate(state["rng"])
        print(f"resumed stage 2 at step {start}", flush=True)
    image_token, prompts = model.config.image_token_id, {}
    model.model.multi_modal_projector.train()
    model.model.language_model.train()
    for step in range(start, args.steps):
        generator = torch.Generator().manual_seed(rng.getrandbits(31))
        if rng.random() < args.evidence_prob * (1 - 0.8 * step / args.steps):  # an evidence step
            per_image = 1
            chosen = rng.sample(range(len(features)), args.images_per_step * args.questions_per_image)
            qa = [rng.choice(qa_by_image[i]) for i in chosen]
            keep = subsets_holding([evidence for _, _, evidence in qa], rng.randint(0, args.evidence_extra),
                                   generator)
            k = keep.shape[1]
        else:
            per_image = args.questions_per_image
            chosen = rng.sample(range(len(features)), args.images_per_step)
            qa = [rng.choice(qa_by_image[i]) for i in chosen for _ in range(per_image)]
            k = sample_token_count(rng, args.full_prob)
            keep = torch.stack([torch.randperm(GRID * GRID, generator=generator)[:k].sort().values for _ in chosen])
        kept = features[chosen].gather(1, keep[..., None].expand(-1, -1, features.shape[-1]))  # (I, k, D)
        image_embeds = model.model.multi_modal_projector(kept)
        qa = [(question, answer) for question, answer, _ in qa]
        for question, _ in qa:
            if (question, k) not in prompts:
                prompts[question, k] = split_prompt(question, tokenizer, image_token, k)
        answers = [[tokenizer.convert_tokens_to_ids(a), tokenizer.eos_token_id] for _, a in qa]
        words = None if patch_words is None else patch_words[chosen].gather(1, keep[..., None].expand(-1, -1, 2))
        loss = shared_prefix_loss(model, prompts[qa[0][0], k][0], [prompts[q, k][1] for q, _ in qa], answers,
                                  image_embeds, per_image, words, args.token_words_weight)
        optimizer_step(loss, optimizer, scheduler, params)
        extra = {}
        if probe is not None and (step % args.llava_probe_every == 0 or step == args.steps - 1):
            extra = {"probe_all": probe_llava(model, tokenizer, *probe),
                     "probe_random16": probe_llava(model, tokenizer, *probe, k=16)}
        log(step, args.steps - 1, loss.item(), tokens=k, lr=scheduler.get_last_lr()[0], **extra)
        if (step + 1) % args.save_every == 0 and step < args.steps - 1:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "log": log.entries,
                        "rng": rng.getstate()}, checkpoint)
    model.eval()
    return log


@torch.no_grad()
def projector_from_heads(projector, heads: torch.nn.ModuleDict) -> None:
    """Start the projector's first layer from the stage-1 heads (LLaVA's stage 1 aligns the projector before
    the LLM is tuned; here the tower's own probes are that alignment): its first output units compute the
    patch head's colour, shape, centre and position outputs and the object head's shape logits; the other
    units keep their random initialisation."""
    weight = torch.cat([heads["patch"].weight, heads["object"].weight])  # (PATCH_OUTPUTS + 4, D)
    bias = torch.cat([heads["patch"].bias, heads["object"].bias])
    projector.linear_1.weight[:len(weight)] = weight
    projector.linear_1.bias[:len(bias)] = bias


def touched_patches(scene_, objects: list[int]) -> list[int]:
    """Sorted patch indices that the given objects of the scene touch (any share of their pixels)."""
    return sorted({p for i in objects for p in patch_shares(scene_.objects[i])})


def vocabulary_texts(train, test) -> list[str]:
    template = vicuna_prompt("", ANSWER_INSTRUCTION) + " " + SYSTEM
    questions = [q for s in train + test for _, q, _, _ in s.questions]
    return [template, *questions, " ".join(ANSWERS), " ".join(f"{c} {s}" for c, s in PAIRS)]


# ---------------------------------------------------------------------------------------------- the run


def train(args) -> Path | None:
    """Stage 1 (resumed from ``<out>/stage1.pt``), then 1b and 2 unless ``args.stage == "vision"``, and the
    saved checkpoint in ``args.out`` (None after stage 1 only); ``args`` carries scripts/train_scenes.py's
    options."""
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    started = time.time()
    train_scenes, test = scenes("train", args.scenes), scenes("test")
    tokenizer = build_word_tokenizer(vocabulary_texts(train_scenes, test))
    model = build_model(tokenizer, args.vision_hidden, args.vision_layers, args.text_hidden, args.text_layers,
                        tie_embeddings=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = torch.from_numpy(np.stack([np.asarray(render(s)) for s in train_scenes]))  # (N, 336, 336, 3) uint8
    targets = stack_targets(train_scenes)
    print(f"{len(train_scenes)} train scenes rendered in {time.time() - started:.0f} s", flush=True)
    probe_scenes = [scene("train", args.scenes + i) for i in range(args.probe_scenes)]  # held out, not test
    probe = (torch.from_numpy(np.stack([np.asarray(render(s)) for s in probe_scenes])),
             stack_targets(probe_scenes)) if probe_scenes else None
    tower = model.model.vision_tower
    vision_log, heads = pretrain_tower(tower, pixels, targets, args, out / "stage1.pt", probe)
    if args.projector_from_heads:
        projector_from_heads(model.model.multi_modal_projector, heads)
    if args.stage == "vision":
        return None
    features, pooled = tower_features(tower, pixels)
    del pixels
    print(f"features {tuple(features.shape)} after {time.time() - started:.0f} s", flush=True)
    probe_features, probe_pooled = tower_features(tower, probe[0]) if probe else (None, None)
    clip_log = clip_stage(tower, pooled, train_scenes, test, probe_scenes, probe_pooled, args, out)
    qa_by_image = [[(q, a, touched_patches(s, objects)) for _, q, a, objects in s.questions] for s in train_scenes]
    llava_probe = (probe_features, [[(q, a) for _, q, a, _ in s.questions] for s in probe_scenes]) if probe else None
    patch_words = patch_word_targets(tokenizer, targets) if args.token_words_weight > 0 else None
    llava_log = train_llava(model, tokenizer, features, qa_by_image, args, rng, out / "stage2.pt", llava_probe,
                            patch_words)

    model.save_pretrained(out, safe_serialization=True)
    # tokenizer, image processor (official LLaVA-1.5 pixels), chat template: AutoProcessor.from_pretrained(out)
    write_processor(out, tokenizer, image_size=model.config.vision_config.image_size,
                    patch_size=model.config.vision_config.patch_size)
    record = {"args": vars(args), "train_seconds": round(time.time() - started, 1),
              "torch_threads": torch.get_num_threads(), "log": vision_log.entries + clip_log.entries + llava_log.entries}
    (out / "training_log.json").write_text(json.dumps(record, indent=2))
    return out


def clip_stage(tower, pooled, train_scenes, test, probe_scenes, probe_pooled, args, out: Path) -> RunningLog:
    """Stage 1b: TRIM's CLIP (the frozen tower + a text tower trained on the captions), saved to ``out/clip``."""
    captions = [describe(s) for s in train_scenes]
    clip_tokenizer = build_clip_word_tokenizer(vocabulary_texts(train_scenes, test) + captions)
    held_out = (probe_pooled, [describe(s) for s in probe_scenes]) if probe_scenes else None
    clip, clip_log = train_clip_text(tower, pooled, captions, clip_tokenizer, args, held_out)
    clip.save_pretrained(out / "clip", safe_serialization=True)
    clip_tokenizer.save_pretrained(out / "clip")
    return clip_log


def patch_word_targets(tokenizer, targets: dict) -> torch.Tensor:
    """(N, 576, 2) token ids of each patch's colour and shape words (-1: background or partial cover), the
    targets of ``--token-words-weight``."""
    color_words = torch.tensor([-1] + [tokenizer.convert_tokens_to_ids(c) for c in COLORS])
    shape_words = torch.tensor([-1] + [tokenizer.convert_tokens_to_ids(s) for s in SHAPES])
    color, shape = targets["color"].clamp_min(0), targets["shape"].clamp_min(0)  # partial cover -> background
    return torch.stack([color_words[color], shape_words[shape]], -1)
