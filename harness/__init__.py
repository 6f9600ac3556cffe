"""Orchestration above the model layer (svdprune/, baselines/) and the data layer (eval/): one run, its
results files, sweep resume, the mini protocol. Nothing below imports from here."""
