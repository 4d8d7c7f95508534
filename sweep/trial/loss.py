"""The training loss with or without the whole logits (train.loss_impl).

    python -m sweep trial train.loss_impl=chunked        # auto picks it where it applies

- full: the model's own output layer and loss. It holds the logits of every kept position
  ([tokens x vocab], upcast to fp32 for the cross-entropy) and their gradient as large: with a
  128k vocabulary, the biggest tensors of a step.
- chunked: the labeled positions' hidden states go through the output layer and the
  cross-entropy in vocabulary tiles, each tile recomputed in backward (TRL's maintained
  `ChunkedLogProbFunction`: Triton on a GPU, torch ops elsewhere). Only [labeled tokens x
  hidden] is saved, never [tokens x vocab]; the loss and gradients are the same up to rounding.
- liger: Liger's fused linear cross-entropy (CUDA, with train.liger).

The model keeps its own forward (slicing by `logits_to_keep`, shifting the labels); only its
output layer and its loss function are swapped for the length of one training forward.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from sweep.settings.errors import ConfigError

IGNORE = -100
VOCAB_TILE = 32768  # vocabulary columns per tile (TRL SFTTrainer's)
# config attributes of models whose forward changes the logits after the output layer (Gemma's
# softcapping, Cohere's scale, ...): the chunked loss would see the hidden states changed instead
SCALED_HEADS = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                "lm_head_multiplier", "logits_scaling")  # fmt: skip


def unsupported(model: torch.nn.Module) -> str | None:
    """Why the chunked loss cannot run on this causal LM, or None."""
    config = model.config.get_text_config()
    scaled = [a for a in SCALED_HEADS if getattr(config, a, None) not in (None, 1, 1.0)]
    if scaled:
        return f"its forward rescales the logits ({', '.join(scaled)})"
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or type(head) is not torch.nn.Linear:
        return f"its output layer is a {type(head).__name__}, not a plain Linear"
    return None


def use_chunked(model: torch.nn.Module) -> None:
    """Patch `model` (a causal LM, before PEFT wraps it) so that a training forward with labels
    computes the chunked loss; generation and evaluation are unchanged. ConfigError when the
    model does not allow it (`unsupported`)."""
    reason = unsupported(model)
    if reason:
        raise ConfigError(f"train.loss_impl=chunked: not for {type(model).__name__}: {reason}")
    original = model.forward

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        if labels is None or not self.training:
            return original(*args, labels=labels, **kwargs)
        with _hidden_states_as_logits(self):
            return original(*args, labels=labels, **kwargs)

    model.forward = forward.__get__(model)


@contextlib.contextmanager
def _hidden_states_as_logits(model: Any) -> Iterator[None]:
    """For one forward: the output layer hands on the hidden states it is given, and the loss
    function projects them through the real layer in tiles."""
    head = model.get_output_embeddings()
    previous = model.__dict__.get("_loss_function")
    model.set_output_embeddings(torch.nn.Identity())
    model.loss_function = functools.partial(chunked_loss, head=head)
    try:
        yield
    finally:
        model.set_output_embeddings(head)
        if previous is None:
            del model._loss_function
        else:
            model.loss_function = previous


def chunked_loss(
    logits: torch.Tensor,  # the kept positions' hidden states, [batch, kept, hidden]
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE,
    shift_labels: torch.Tensor | None = None,
    *,
    head: torch.nn.Linear,
    **kwargs: Any,
) -> torch.Tensor:
    """transformers' ForCausalLMLoss (shift, sum over the labeled tokens, divided by
    `num_items_in_batch` or their count) with the logits computed in tiles from `logits`,
    which here are hidden states."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = logits.reshape(-1, logits.size(-1))
    targets = shift_labels.reshape(-1).to(hidden.device)
    keep = targets != ignore_index
    log_probs = ChunkedLogProbFunction.apply(
        hidden[keep], head.weight, head.bias, targets[keep], 1.0, VOCAB_TILE, None, 1.0,
        ("log_probs",),
    )[0]  # fmt: skip
    total = -log_probs.sum()
    if num_items_in_batch is not None:
        return total / torch.as_tensor(num_items_in_batch, device=total.device)
    return total / keep.sum().clamp(min=1)
