"""Training the project's offline models from scratch (no download): ``mini`` on easy-VQA (:mod:`training.mini`)
and ``scenes`` on the procedural scenes benchmark (:mod:`training.scenes`), with what both share in
:mod:`training.common`. The command lines are ``scripts/train_mini.py`` and ``scripts/train_scenes.py``."""
