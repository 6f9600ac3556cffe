"""Train the ``scenes`` model (training/scenes.py: what it is and how it is trained) on the train split of the
procedural scenes benchmark (eval/scenes.py), from scratch, offline, seeded.

    python scripts/train_scenes.py --out checkpoints/scenes --threads 2
"""
from __future__ import annotations

import argparse
import time

from training.scenes import train


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
    parser.add_argument("--background-weight", type=float, default=0.3,
                        help="stage 1: weight of the background patches' loss (object patches: 1)")
    parser.add_argument("--probe-scenes", type=int, default=48,
                        help="held-out train scenes (after the --scenes used) probed during training")
    parser.add_argument("--probe-every", type=int, default=50, help="stage 1 and 1b")
    parser.add_argument("--llava-probe-every", type=int, default=250, help="stage 2")
    parser.add_argument("--clip-steps", type=int, default=600, help="stage 1b (TRIM's CLIP text tower) steps")
    parser.add_argument("--clip-batch", type=int, default=128)
    parser.add_argument("--clip-lr", type=float, default=1e-3)
    parser.add_argument("--clip-text-hidden", type=int, default=64)
    parser.add_argument("--clip-text-layers", type=int, default=2)
    parser.add_argument("--clip-projection", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2500, help="stage 2 steps")
    parser.add_argument("--images-per-step", type=int, default=16)
    parser.add_argument("--questions-per-image", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="stage 2 learning rate")
    parser.add_argument("--full-prob", type=float, default=0.3)
    parser.add_argument("--projector-from-heads", action="store_true",
                        help="stage 2: start the projector's first layer from the stage-1 heads")
    parser.add_argument("--token-words-weight", type=float, default=0.0,
                        help="stage 2: weight of the per-image-token colour/shape word loss")
    parser.add_argument("--evidence-prob", type=float, default=0.6,
                        help="stage 2: share of evidence steps at the start (decays linearly to a fifth)")
    parser.add_argument("--evidence-extra", type=int, default=96,
                        help="stage 2: evidence steps add 0..this many random tokens")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--stage", choices=("all", "vision"), default="all",
                        help="'vision': stop after stage 1 (its checkpoint stays in <out>/stage1.pt)")
    args = parser.parse_args()
    started = time.time()
    out = train(args)
    if out is not None:
        print(f"saved to {out} after {time.time() - started:.0f} s")



if __name__ == "__main__":
    main()
