"""Train the ``mini`` model (training/mini.py: what it is and how it is trained) on the easy-VQA train split,
from scratch, offline, seeded.

    python scripts/train_mini.py --tie-embeddings --present-weight 2 --out <folder>   # both stages in one run

The committed checkpoint was made by four runs chained through ``--vision-from`` / ``--init-from``; their
commands are in checkpoints/mini/README.md.
"""
from __future__ import annotations

import argparse
import time

from training.mini import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="checkpoints/mini")
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=3)
    parser.add_argument("--text-hidden", type=int, default=64)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--vision-steps", type=int, default=800)
    parser.add_argument("--vision-batch", type=int, default=32)
    parser.add_argument("--vision-lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=2000, help="stage 2 steps")
    parser.add_argument("--images-per-step", type=int, default=16)
    parser.add_argument("--questions-per-image", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="stage 2 learning rate")
    parser.add_argument("--full-prob", type=float, default=0.3,
                        help="stage 2: probability that a step keeps all 576 image tokens")
    parser.add_argument("--balance-yes-no", action=argparse.BooleanOptionalAction, default=False,
                        help="stage 2: sample yes/no questions with present and absent cases balanced (tried: "
                             "it did not teach the LLM to compare colours and lost accuracy; off by default)")
    parser.add_argument("--questions", choices=("all", "yes-no"), default="all",
                        help="stage 2: train on all questions, or on the yes/no questions only (a focused phase "
                             "for the comparison of the named shape/colour with the seen one)")
    parser.add_argument("--present-weight", type=float, default=1.0,
                        help="stage 2: sampling weight of yes/no questions whose named shape or colour is present "
                             "(present_weights; 1: the train split's own mix)")
    parser.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=False,
                        help="LLM input embeddings shared with the output head (Llama's tie_word_embeddings)")
    parser.add_argument("--init-from", default=None,
                        help="skip stage 1 and start stage 2 from this mini checkpoint folder (tower, projector "
                             "and LLM; same sizes): a fine-tuning continuation")
    parser.add_argument("--vision-from", default=None,
                        help="skip stage 1: take the vision tower of this mini checkpoint folder (same tower size)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--images", type=int, default=0, help="train on the first N train images only (0: all)")
    args = parser.parse_args()
    started = time.time()
    out = train(args)
    print(f"saved to {out} after {time.time() - started:.0f} s")



if __name__ == "__main__":
    main()
