"""Gradient caching (GradCache): a contrastive loss over a batch larger than fits in one forward pass.

Legend: K chunks (micro-batches), n rows in a chunk, N = sum of n, D embedding size.
1. forward every chunk without a graph, saving the RNG state before each (dropout, patch dropout);
2. concatenate the outputs to [N, D] leaves, compute the loss once, backpropagate to the leaves;
3. re-forward each chunk with its RNG state restored and backpropagate its slice of the cached gradient.
The parameter gradients equal those of one backward through the full-batch graph, while only one
chunk's activations are alive at a time. Outputs named in `shared_keys` (logit_scale, logit_bias) are
the same in every chunk: the loss sees chunk 0's value and chunk 0's re-forward carries its gradient.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Outputs = dict[str, torch.Tensor]


def rng_state() -> dict:
    """The CPU and every CUDA generator's state."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_dict(outputs) -> Outputs:
    if not isinstance(outputs, dict):
        raise ValueError(f"cached_step: forward_fn must return a dict of tensors, got {type(outputs).__name__}")
    return outputs


def _surrogate(outputs: Outputs, grads: Outputs) -> torch.Tensor | None:
    """sum over keys of <output, cached grad>: its gradient w.r.t. each output is the cached gradient."""
    terms = [(outputs[key] * grad).sum() for key, grad in grads.items()
             if grad is not None and outputs[key].requires_grad]
    return torch.stack(terms).sum() if terms else None


def cached_step(forward_fn: Callable[[object], Outputs], chunks: Sequence, loss_fn: Callable[[Outputs], torch.Tensor],
                *, shared_keys: Sequence[str] = ("logit_scale", "logit_bias"),
                backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
                after_chunk: Callable[[], None] | None = None) -> torch.Tensor:
    """Accumulate the gradient of loss_fn(all chunks' outputs) into the parameters; return the loss.

    forward_fn(chunk) -> dict of tensors with a leading row dimension (concatenated over chunks) or,
    for `shared_keys`, a per-model value. loss_fn(outputs) sees the full local batch (a distributed
    loss gathers the other ranks' rows itself); loss parameters it owns get their gradient in step 2.
    `backward(surrogate)` runs once per chunk (engine.backward under DeepSpeed), then `after_chunk()`.
    One chunk skips the cache: a single forward with graph.
    """
    if len(chunks) == 0:
        raise ValueError("cached_step: chunks is empty")
    if len(chunks) == 1:
        outputs = _as_dict(forward_fn(chunks[0]))
        loss = loss_fn(outputs)
        backward(loss)
        if after_chunk is not None:
            after_chunk()
        return loss.detach()

    states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(rng_state())
            cached.append({key: value.detach() for key, value in _as_dict(forward_fn(chunk)).items()})
    after_forward = rng_state()

    keys = list(cached[0])
    leaves: Outputs = {}
    for key in keys:
        if key in shared_keys:
            leaves[key] = cached[0][key].clone()
        else:
            leaves[key] = torch.cat([out[key] for out in cached])
        if leaves[key].is_floating_point():
            leaves[key].requires_grad_(True)
    loss = loss_fn(leaves)
    loss.backward()
    row_key = next((key for key in keys if key not in shared_keys), None)
    if row_key is None:
        raise ValueError(f"cached_step: forward_fn returned only shared outputs {keys}; nothing has rows")
    sizes = [out[row_key].shape[0] for out in cached]
    grads_per_key: dict[str, list] = {}
    for key in keys:
        grad = leaves[key].grad
        if grad is None:
            continue
        grads_per_key[key] = [grad] + [None] * (len(chunks) - 1) if key in shared_keys else list(grad.split(sizes))

    for index, chunk in enumerate(chunks):
        set_rng_state(states[index])
        outputs = _as_dict(forward_fn(chunk))
        grads = {key: per_chunk[index] for key, per_chunk in grads_per_key.items()}
        surrogate = _surrogate(outputs, grads)
        if surrogate is None:
            raise ValueError(f"cached_step: no output of chunk {index} ({sorted(outputs)}) requires a gradient")
        backward(surrogate)
        if after_chunk is not None:
            after_chunk()
    set_rng_state(after_forward)
    return loss.detach()
