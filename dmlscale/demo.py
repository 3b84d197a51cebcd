"""A small end-to-end demo of the losses: train an embedder on scikit-learn's handwritten digits.

The images are real (8x8 digits, 10 classes). A two-layer MLP maps them to a 32-d embedding; the chosen
dmlscale loss (and optional miner) trains it on class-balanced batches, and precision@1 (nearest
neighbour by cosine similarity, self excluded) on the held-out split is printed before and after.
"""

from __future__ import annotations

import time

import torch

from dmlscale.components import build_component
from dmlscale.demo_choices import DEMO_LOSSES, DEMO_MINERS, check_choice


def load_digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as float tensors, split 70/30 with a fixed permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images_ND = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    labels_N = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels_N), generator=torch.Generator().manual_seed(seed))
    num_train = int(0.7 * len(order))
    train, test = order[:num_train], order[num_train:]
    return images_ND[train], labels_N[train], images_ND[test], labels_N[test]


@torch.no_grad()
def precision_at_1(model: torch.nn.Module, images_ND: torch.Tensor, labels_N: torch.Tensor) -> float:
    """Fraction of samples whose nearest other sample (cosine) has the same label."""
    emb_ND = torch.nn.functional.normalize(model(images_ND), dim=1)
    sim_NN = emb_ND @ emb_ND.t()
    sim_NN.fill_diagonal_(-float("inf"))
    nearest_N = sim_NN.argmax(dim=1)
    return (labels_N[nearest_N] == labels_N).float().mean().item()


def balanced_batch(labels_N: torch.Tensor, num_classes: int, per_class: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of `per_class` random samples from each of `num_classes` random classes."""
    classes = torch.randperm(10, generator=gen)[:num_classes]
    picks = []
    for c in classes.tolist():
        members = torch.where(labels_N == c)[0]
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picks)


def build_loss(name: str, *, num_classes: int, embedding_size: int) -> torch.nn.Module:
    """The loss `name` with its defaults; a loss with learnable class parameters (CenterLoss) gets the
    demo's class count and embedding size."""
    check_choice("--loss", name, DEMO_LOSSES)
    return build_component("loss", name, key="--loss",
                           context={"num_classes": num_classes, "embedding_size": embedding_size,
                                    "descriptors_dim": embedding_size})  # P2SGradLoss's name for the size


def build_miner(name: str | None) -> torch.nn.Module | None:
    """The miner `name` with its defaults (None: no miner)."""
    if name is None:
        return None
    check_choice("--miner", name, DEMO_MINERS)
    return build_component("miner", name, key="--miner")


def run(loss_name: str, miner_name: str | None, steps: int, seed: int, print_every: int) -> dict:
    torch.manual_seed(seed)
    train_x, train_y, test_x, test_y = load_digits_split(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))
    loss_fn = build_loss(loss_name, num_classes=10, embedding_size=32)
    miner = build_miner(miner_name)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=3e-3)  # CenterLoss: centres
    gen = torch.Generator().manual_seed(seed)
    before = precision_at_1(model, test_x, test_y)
    print(f"dmlscale demo: {loss_name}" + (f" + {miner_name}" if miner_name else "") + f", {steps} steps, seed {seed}")
    print(f"{'step':>6} {'loss':>10} {'test P@1':>9}")
    print(f"{0:>6} {'':>10} {before:>9.3f}")
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = balanced_batch(train_y, num_classes=8, per_class=8, gen=gen)
        emb_BD = model(train_x[batch])
        indices_tuple = miner(emb_BD, train_y[batch]) if miner is not None else None
        loss = loss_fn(emb_BD, train_y[batch], indices_tuple)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % print_every == 0 or step == steps:
            print(f"{step:>6} {loss.item():>10.4f} {precision_at_1(model, test_x, test_y):>9.3f}")
    after = precision_at_1(model, test_x, test_y)
    seconds = time.perf_counter() - start
    print(f"held-out precision@1: {before:.3f} -> {after:.3f} in {seconds:.1f} s")
    return {"before": before, "after": after, "seconds": seconds}
