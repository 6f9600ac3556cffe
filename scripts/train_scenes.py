"""Train the ``scenes`` model: a small LLaVA-class model (LlavaForConditionalGeneration, the classes of
LLaVA-1.5) on the train split of the procedural scenes benchmark (eval/scenes.py), from scratch, offline, seeded.

    python scripts/train_scenes.py --out checkpoints/scenes --threads 2

Same recipe and pieces as the mini model (scripts/train_mini.py: tokenizer, model builder, stage-2 trainer
with token-count augmentation), with a deeper tower so that every encoder-side method reaches every budget:

1. Vision tower (``pretrain_tower``): a CLIPVisionModel (7 layers: ToMe merges in layers 0..5, and six
   halvings of 576 reach 9 <= 16) trained as a dense classifier. Targets: for every layer -2 patch token (the
   layer LLaVA reads) the colour and the shape of the object it lies on, or background (patches an object
   covers with 0 < share < COVER are ignored), and the patch's grid position (row, col), a regression that
   keeps "where" in the features for the relation questions; from CLIP's pooled output (post-LN CLS of the
   last layer), which (colour, shape) pairs are in the scene (multi-label), so that the CLS token attends to
   the objects as CLIP's does to salient content. Horizontal flips (image and patch labels). Checkpointed
   every ``--save-every`` steps to ``<out>/stage1.pt``; a rerun resumes there.
2. LLaVA (``train_llava``, train_mini's stage 2 with a shared prefix): tower frozen, layer -2 features
   computed once, projector + LLM trained teacher-forced on "<answer></s>", ``--full-prob`` of the steps on
   all 576 tokens, the others on a random raster-ordered subset of k tokens (k log-uniform in [8, 576]).
   Random subsets favour no method's selection rule. The image comes before the question in the vicuna_v1
   prompt, so under causal attention the prefix "<s> SYSTEM USER: <image x k>" of an image is the same for all
   its questions: it runs once per image and its KV cache is repeated for the questions (``shared_prefix_loss``;
   the loss equals train_mini.answer_loss on the full rows, tested), which saves most of the LLM's compute.

TRIM is not supported by this model (no text tower); see checkpoints/scenes/README.md.
Nothing of the test split is trained on (its scenes are drawn from another seed).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_mini import (IGNORE, RunningLog, build_model, build_word_tokenizer, cosine_schedule,  # noqa: E402
                        sample_token_count)

from eval.scenes import ANSWERS, COLORS, COVER, GRID, SHAPES, patch_labels, render, scenes  # noqa: E402
from svdprune.prompts import (ANSWER_INSTRUCTION, CLIP_MEAN, CLIP_STD, SYSTEM, tokenizer_image_token,  # noqa: E402
                               vicuna_prompt)

PAIRS = [(c, s) for c in COLORS for s in SHAPES]


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 336, 336, 3) -> CLIP-normalised float32 (B, 3, 336, 336); equals svdprune.prompts.preprocess_image
    on a 336 x 336 image (no padding, no resize)."""
    x = pixels.permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def scene_targets(scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch colour and shape class (0 background, 1+index on an object, IGNORE when partly covered), and
    the scene's (colour, shape) pairs as a multi-hot vector (24,)."""
    owner, share = patch_labels(scene)
    color = np.array([1 + list(COLORS).index(o.color) for o in scene.objects])
    shape = np.array([1 + SHAPES.index(o.shape) for o in scene.objects])
    covered = share >= COVER
    color_t = np.where(covered, color[owner.clip(0)], np.where(share == 0, 0, IGNORE))
    shape_t = np.where(covered, shape[owner.clip(0)], np.where(share == 0, 0, IGNORE))
    pairs = np.zeros(len(PAIRS), dtype=np.float32)
    for o in scene.objects:
        pairs[PAIRS.index((o.color, o.shape))] = 1
    return color_t, shape_t, pairs


def flip_patches(t: torch.Tensor) -> torch.Tensor:
    """(B, 576) per-patch values of horizontally flipped images."""
    return t.view(-1, GRID, GRID).flip(-1).reshape(t.shape)


def pretrain_tower(tower, pixels, color_t, shape_t, pairs, args, checkpoint: Path) -> RunningLog:
    """Stage 1 (see the module docstring). pixels uint8 (N, 336, 336, 3); color_t / shape_t (N, 576) long;
    pairs (N, 24) float."""
    hidden = tower.config.hidden_size
    pair_head = torch.nn.Linear(hidden, len(PAIRS))
    patch_head = torch.nn.Linear(hidden, 1 + len(COLORS) + 1 + len(SHAPES) + 2)
    params = [*tower.parameters(), *pair_head.parameters(), *patch_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.05)
    scheduler = cosine_schedule(optimizer, args.vision_steps, args.warmup)
    log, start = RunningLog("vision", args.log_every), 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        for module, key in ((tower, "tower"), (pair_head, "pair_head"), (patch_head, "patch_head"),
                            (optimizer, "optimizer"), (scheduler, "scheduler")):
            module.load_state_dict(state[key])
        start, log.entries = state["step"] + 1, state["log"]
        torch.set_rng_state(state["rng"])
        print(f"resumed stage 1 at step {start}", flush=True)
    grid = torch.arange(GRID * GRID)
    position = torch.stack([grid // GRID, grid % GRID], -1).float() / (GRID - 1)  # (576, 2) row, col in [0, 1]
    n_color = 1 + len(COLORS)
    tower.train()
    for step in range(start, args.vision_steps):
        batch = torch.randint(0, len(pixels), (args.vision_batch,))
        x = normalise(pixels[batch])
        colors, shapes = color_t[batch].clone(), shape_t[batch].clone()
        flip = torch.rand(len(batch)) < 0.5
        x[flip] = x[flip].flip(-1)
        colors[flip], shapes[flip] = flip_patches(colors[flip]), flip_patches(shapes[flip])
        out = tower(pixel_values=x, output_hidden_states=True)
        patch = patch_head(out.hidden_states[-2][:, 1:])  # (B, 576, 7 + 5 + 2)
        loss = (F.binary_cross_entropy_with_logits(pair_head(out.pooler_output), pairs[batch])
                + F.cross_entropy(patch[..., :n_color].flatten(0, 1), colors.flatten(), ignore_index=IGNORE)
                + F.cross_entropy(patch[..., n_color:-2].flatten(0, 1), shapes.flatten(), ignore_index=IGNORE)
                + 10 * F.mse_loss(patch[..., -2:], position.expand_as(patch[..., -2:])))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        log(step, args.vision_steps - 1, loss.item(), lr=scheduler.get_last_lr()[0])
        if (step + 1) % args.save_every == 0 or step == args.vision_steps - 1:
            torch.save({"tower": tower.state_dict(), "pair_head": pair_head.state_dict(),
                        "patch_head": patch_head.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "log": log.entries,
                        "rng": torch.get_rng_state()}, checkpoint)
    tower.eval()
    return log


@torch.no_grad()
def tower_features(tower, pixels: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Layer -2 patch features (N, 576, D) of the frozen tower, CLS dropped."""
    return torch.cat([tower(pixel_values=normalise(pixels[i:i + batch]), output_hidden_states=True)
                      .hidden_states[-2][:, 1:] for i in range(0, len(pixels), batch)])


def split_prompt(question: str, tokenizer, image_token: int, k: int) -> tuple[list[int], list[int]]:
    """The prompt's token ids with k image tokens, cut after the last image token: (prefix, suffix)."""
    ids = tokenizer_image_token(vicuna_prompt(question, ANSWER_INSTRUCTION), tokenizer, image_token, k)
    cut = max(i for i, t in enumerate(ids) if t == image_token) + 1
    return ids[:cut], ids[cut:]


def shared_prefix_loss(model, prefix: list[int], suffixes: list[list[int]], answer_ids: list[list[int]],
                       image_embeds: torch.Tensor, per_image: int) -> torch.Tensor:
    """Teacher-forced loss on "<answer></s>" with the prefix run once per image. prefix: ids with k image
    tokens (the same for every image), image_embeds (I, k, d); suffixes / answer_ids: I * per_image rows, the
    questions of image i at rows i * per_image ... (i + 1) * per_image - 1. Suffixes are right-padded: under
    causal attention the padding after a row's last token changes nothing before it."""
    llm = model.model.language_model
    ids = torch.tensor(prefix).expand(len(image_embeds), -1)
    embeds = llm.embed_tokens(ids).masked_scatter((ids == model.config.image_token_id)[..., None], image_embeds)
    cache = llm(inputs_embeds=embeds, use_cache=True).past_key_values
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
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(answer_ids).reshape(-1))


def train_llava(model, tokenizer, features: torch.Tensor, qa_by_image: list[list[tuple[str, str]]], args,
                rng: random.Random, checkpoint: Path) -> RunningLog:
    """Stage 2 on frozen layer -2 features (N, 576, D): each step ``images_per_step`` images, one k, and
    ``questions_per_image`` questions per image drawn from its (question, answer) pairs. Checkpointed every
    ``save_every`` steps to ``checkpoint`` (resumed from there)."""
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
        chosen = rng.sample(range(len(features)), args.images_per_step)
        k = sample_token_count(rng, args.full_prob)
        generator = torch.Generator().manual_seed(rng.getrandbits(31))
        keep = torch.stack([torch.randperm(GRID * GRID, generator=generator)[:k].sort().values for _ in chosen])
        kept = features[chosen].gather(1, keep[..., None].expand(-1, -1, features.shape[-1]))  # (I, k, D)
        image_embeds = model.model.multi_modal_projector(kept)
        qa = [rng.choice(qa_by_image[i]) for i in chosen for _ in range(args.questions_per_image)]
        for question, _ in qa:
            if (question, k) not in prompts:
                prompts[question, k] = split_prompt(question, tokenizer, image_token, k)
        answers = [[tokenizer.convert_tokens_to_ids(a), tokenizer.eos_token_id] for _, a in qa]
        loss = shared_prefix_loss(model, prompts[qa[0][0], k][0], [prompts[q, k][1] for q, _ in qa], answers,
                                  image_embeds, args.questions_per_image)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        log(step, args.steps - 1, loss.item(), tokens=k, lr=scheduler.get_last_lr()[0])
        if (step + 1) % args.save_every == 0 and step < args.steps - 1:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "log": log.entries,
                        "rng": rng.getstate()}, checkpoint)
    model.eval()
    return log


def vocabulary_texts(train, test) -> list[str]:
    template = vicuna_prompt("", ANSWER_INSTRUCTION) + " " + SYSTEM
    questions = [q for s in train + test for _, q, _, _ in s.questions]
    return [template, *questions, " ".join(ANSWERS), " ".join(f"{c} {s}" for c, s in PAIRS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="checkpoints/scenes")
    parser.add_argument("--scenes", type=int, default=4000, help="train scenes")
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=7)
    parser.add_argument("--text-hidden", type=int, default=96)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-steps", type=int, default=600)
    parser.add_argument("--vision-batch", type=int, default=16)
    parser.add_argument("--vision-lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=2500, help="stage 2 steps")
    parser.add_argument("--images-per-step", type=int, default=16)
    parser.add_argument("--questions-per-image", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="stage 2 learning rate")
    parser.add_argument("--full-prob", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--stage", choices=("all", "vision"), default="all",
                        help="'vision': stop after stage 1 (its checkpoint stays in <out>/stage1.pt)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    started = time.time()
    train, test = scenes("train", args.scenes), scenes("test")
    tokenizer = build_word_tokenizer(vocabulary_texts(train, test))
    model = build_model(tokenizer, args.vision_hidden, args.vision_layers, args.text_hidden, args.text_layers,
                        tie_embeddings=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = torch.from_numpy(np.stack([np.asarray(render(s)) for s in train]))  # (N, 336, 336, 3) uint8
    targets = [scene_targets(s) for s in train]
    color_t, shape_t = (torch.from_numpy(np.stack([t[i] for t in targets])).long() for i in (0, 1))
    pairs = torch.from_numpy(np.stack([t[2] for t in targets]))
    print(f"{len(train)} train scenes rendered in {time.time() - started:.0f} s", flush=True)
    tower = model.model.vision_tower
    vision_log = pretrain_tower(tower, pixels, color_t, shape_t, pairs, args, out / "stage1.pt")
    if args.stage == "vision":
        return
    features = tower_features(tower, pixels)
    del pixels
    print(f"features {tuple(features.shape)} after {time.time() - started:.0f} s", flush=True)
    qa_by_image = [[(q, a) for _, q, a, _ in s.questions] for s in train]
    llava_log = train_llava(model, tokenizer, features, qa_by_image, args, rng, out / "stage2.pt")

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "crop_size": 336, "size": 336}, indent=2))
    record = {"args": vars(args), "train_seconds": round(time.time() - started, 1),
              "torch_threads": torch.get_num_threads(), "log": vision_log.entries + llava_log.entries}
    (out / "training_log.json").write_text(json.dumps(record, indent=2))
    print(f"saved to {out} after {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
