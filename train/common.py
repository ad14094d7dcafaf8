"""Seeding and threads of a training run (the rest the stages share lives in cutbg_env)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, threads: int = 0) -> None:
    """Seed Python, numpy and torch; ``threads > 0`` sets torch's intra-op threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
