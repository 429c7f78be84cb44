"""Shared fixtures: a tiny random Llama (GQA) calibrated on a few windows, and a tiny exploration log."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynprune.importance import calibrate
from dynprune.models import PrunableLM, load_model
from dynprune.runtime import ProfileConfig

# Tiny models run faster on one thread (less scheduling overhead), and the suite must not fight
# other processes for the machine's 2 cores. Embedded-model tests set their own thread count.
torch.set_num_threads(1)

CALIBRATION_TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "Seven times eight is fifty-six, and nine squared is eighty-one.",
    "Summarise the following passage in one sentence: the river rose after days of rain.",
]

#: Env settings of the offline-data tests: tiny model, proxy reward, 3 answer tokens, 2 timed tokens once.
TINY_ENV = {
    "model": "tiny-llama",
    "reward": "proxy",
    "max_new_tokens": 3,
    "profile": ProfileConfig(new_tokens=2, repeats=1),
    "split": "train",
}


def tiny(dtype: torch.dtype = torch.float64) -> PrunableLM:
    lm = load_model("tiny-llama", device="cpu", dtype=dtype)
    lm.set_importance(calibrate(lm, texts=CALIBRATION_TEXTS, n_prompts=8, seq_len=48))
    return lm


@pytest.fixture(scope="session")
def tiny_lm() -> PrunableLM:
    """A float64 tiny Llama, calibrated; tests must leave it unpruned."""
    return tiny(torch.float64)


@pytest.fixture(scope="session")
def tiny_lm32() -> PrunableLM:
    """A float32 tiny Llama, calibrated."""
    return tiny(torch.float32)


@pytest.fixture(scope="module")
def prompt_ids() -> list[str]:
    """The first three train prompts of :data:`TINY_ENV` (one set per test module)."""
    from offline_data.explore import prompt_ids_of

    return prompt_ids_of(TINY_ENV)[:3]


@pytest.fixture(scope="module")
def sweep_logs(tmp_path_factory: pytest.TempPathFactory, prompt_ids: list[str]) -> Path:
    """A sweep exploration (every action once) of ``prompt_ids`` under :data:`TINY_ENV`."""
    from offline_data.explore import explore

    out = tmp_path_factory.mktemp("sweep")
    explore(TINY_ENV, "sweep", out, prompt_ids=prompt_ids)
    return out
