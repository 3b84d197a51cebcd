"""The RNG states a checkpoint carries per rank, so a resumed run draws what the uninterrupted one would."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_states() -> dict:
    """This process's torch (CPU and CUDA), numpy and python RNG states."""
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
