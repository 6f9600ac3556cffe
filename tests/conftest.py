"""Shared fixtures: the random tiny LLaVA and a small synthetic dataset. Nothing here touches the network."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the fingerprint memo (harness/identity.py) of the test session lives in a temporary folder, not ~/.cache
os.environ.setdefault("SVDPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="svdprune-cache-"))

import numpy as np
import pytest
from PIL import Image

from eval.fixtures import write_local_fixture
from svdprune.families.llava15 import build_tiny


@pytest.fixture(scope="session")
def tiny():
    """Tiny random LLaVA with 576 image tokens (CLS + 24 x 24), float32 on CPU."""
    return build_tiny(seed=0, vision_layers=3, text_layers=4)  # shallow: most tests need the plumbing only


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory):
    """A local-format dataset: 24 questions over 8 images."""
    return write_local_fixture(tmp_path_factory.mktemp("shapes"), questions=24, images=8, seed=0)


@pytest.fixture(scope="session")
def random_images():
    """Four random RGB images of different aspect ratios."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in [(100, 150), (200, 80), (64, 64), (300, 310)]]


QUESTIONS = ["What color is the shape?", "Is there a circle?", "How many?",
             "What is the name of the thing on the left side?"]
