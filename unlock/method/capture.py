"""Stage 1: capture residual-stream activations of a causal LM.

Layer convention (used by every stage): "layer L" is the output of decoder block L, i.e. the residual
stream after block L, which Hugging Face returns as ``hidden_states[L + 1]``. One caveat: for the
*last* block, transformers overwrites ``hidden_states[-1]`` with the final-norm output; UNLOCK captures
the block output itself (before the final norm), because that is the tensor steering modifies.

Capture uses forward hooks only (no patched modeling files) and stops the forward pass right after
the deepest requested block, so capturing early layers costs a fraction of a full pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from unlock.method.blocks import check_layers, decoder_layers, model_device

POSITION_RULES = ("last", "mean", "all")
PADDING_SIDES = ("left", "right")


@dataclass(frozen=True)
class CaptureSettings:
    """How activations are read (config group ``capability``): the one default of each. ``last`` is the
    paper's position; prompts are left-padded so every row's last token is in the final column."""

    position: str = "last"
    batch_size: int = 16
    max_length: int | None = None
    padding_side: str = "left"

    def __post_init__(self) -> None:
        if self.position not in POSITION_RULES:
            raise ValueError(f"unknown position rule {self.position!r}; allowed: {', '.join(POSITION_RULES)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size} is out of range: must be >= 1")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side {self.padding_side!r} is not allowed; allowed: {', '.join(PADDING_SIDES)}")


class _StopForward(Exception):
    """Raised from the deepest hook to skip blocks nobody reads."""


@dataclass
class Activations:
    """Activations per layer, float32 on CPU.

    ``per_layer[L]`` is (N, d) for the ``last`` and ``mean`` rules and (total_tokens, d) for ``all``,
    where rows are the non-pad tokens of prompt 0, then prompt 1, ... (``token_counts`` splits them).
    """

    per_layer: dict[int, torch.Tensor]
    position: str
    token_counts: list[int]
    n_forward_passes: int = 0
    layers: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.layers = sorted(self.per_layer)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.per_layer[layer]

    @property
    def n_prompts(self) -> int:
        return len(self.token_counts)


def check_position_rule(position: str) -> str:
    if position not in POSITION_RULES:
        raise ValueError(f"unknown position rule {position!r}; allowed: {', '.join(POSITION_RULES)}")
    return position


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row; correct for left and right padding alike."""
    length = attention_mask.shape[1]
    flipped_first_one = torch.argmax(attention_mask.flip(dims=[1]).to(torch.int64), dim=1)
    return length - 1 - flipped_first_one


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as generate() does, so that padding
    does not shift absolute position embeddings (GPT-2) and every row matches its unpadded run."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def reduce_positions(hidden: torch.Tensor, attention_mask: torch.Tensor, position: str) -> torch.Tensor:
    """Apply a position rule to (B, T, d) hidden states; padding never enters a mean."""
    if position == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask)]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if position == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if position == "all":
        return hidden[attention_mask.bool()]
    raise ValueError(f"unknown position rule {position!r}; allowed: {', '.join(POSITION_RULES)}")


def _block_output(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def _check_arguments(prompts: Sequence[str], position: str, padding_side: str, batch_size: int) -> None:
    check_position_rule(position)
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"unknown padding side {padding_side!r}; allowed: {', '.join(PADDING_SIDES)}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    if len(prompts) == 0:
        raise ValueError("empty prompt set: capture needs at least 1 prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} is out of range: must be >= 1")


def _encode(tokenizer, prompts: list[str], max_length: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    # Token lists straight to torch.tensor: transformers' own return_tensors conversion first
    # flattens every id in Python, which costs as much as a small model's block on CPU.
    encoded = tokenizer(prompts, padding=True, truncation=max_length is not None, max_length=max_length)
    return (
        torch.tensor(encoded["input_ids"], dtype=torch.long, device=device),
        torch.tensor(encoded["attention_mask"], dtype=torch.long, device=device),
    )


@torch.no_grad()
def capture_activations(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    position: str = CaptureSettings.position,
    batch_size: int = CaptureSettings.batch_size,
    padding_side: str = CaptureSettings.padding_side,
    max_length: int | None = CaptureSettings.max_length,
    progress: bool | str = True,
) -> Activations:
    """Residual-stream activations after the given decoder blocks (default: all) for each prompt.

    Prompts are plain text tokenised as-is (no chat template), padded on ``padding_side``.
    """
    _check_arguments(prompts, position, padding_side, batch_size)
    blocks = decoder_layers(model)
    wanted = check_layers(list(range(len(blocks))) if layers is None else list(layers), len(blocks))
    collected: dict[int, list[torch.Tensor]] = {layer: [] for layer in wanted}
    current_mask: list[torch.Tensor] = []

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            hidden = _block_output(output).float()
            collected[layer].append(reduce_positions(hidden, current_mask[0], position).cpu())
            if layer == wanted[-1]:
                raise _StopForward  # the deepest requested block: skip the rest of the model

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in wanted]
    original_side, tokenizer.padding_side = tokenizer.padding_side, padding_side
    token_counts: list[int] = []
    starts = range(0, len(prompts), batch_size)
    try:
        for start in tqdm(
            starts, desc=progress if isinstance(progress, str) else "capture", disable=not progress, leave=False
        ):
            input_ids, attention_mask = _encode(
                tokenizer, list(prompts[start : start + batch_size]), max_length, model_device(model)
            )
            current_mask[:] = [attention_mask]
            token_counts.extend(attention_mask.sum(dim=1).tolist())
            try:
                model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask),
                    use_cache=False,
                )
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
        tokenizer.padding_side = original_side
    per_layer = {layer: torch.cat(chunks, dim=0) for layer, chunks in collected.items()}
    return Activations(per_layer=per_layer, position=position, token_counts=token_counts, n_forward_passes=len(starts))
