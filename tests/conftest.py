"""Shared fixtures: tiny random models of several families and the offline tokenizer."""

from __future__ import annotations

import pytest
import torch

from unlock.models.tiny import tiny_model, tiny_tokenizer

PROMPTS = [
    "Question: What is 3 plus 4?\nAnswer:",
    "Q: A farmer has 12 apples and buys 7 more. How many apples does he have? A:",
    "Question: What is 6 times 9?\nAnswer: Let's think step by step.\n",
    "Hi",
    "Step 1: add 2 and 5.",
]


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return list(PROMPTS)


@pytest.fixture(scope="session")
def llama():
    """Llama-style Source stand-in: width 64, 4 layers."""
    return tiny_model("llama", hidden_size=64, num_layers=4, seed=0)


@pytest.fixture(scope="session")
def qwen2():
    """Qwen2-style Target stand-in: a different width (48) and depth (6)."""
    return tiny_model("qwen2", hidden_size=48, num_layers=6, seed=1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(1234)
