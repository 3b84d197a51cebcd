"""ManifoldLoss equals PML's (same proxies, same seeded meta-class draw, or given meta-classes) in value
and gradient, for embeddings and proxies. PML inverts the graph matrix in float32 even for float64
inputs, so the comparison uses 1e-5; ours inverts in float64. lambdaC=inf is a PML bug (it multiplies
the context term by inf): ours keeps only the context term."""

import math

import pytest
import torch

import dmlscale.losses as ours
from tests.parity import assert_close

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

PML_TOL = 1e-5  # PML's float32 inverse


def pair(**kwargs):
    torch.manual_seed(0)
    theirs = pml_losses.ManifoldLoss(**kwargs).double()
    mine = ours.ManifoldLoss(**kwargs).double()
    with torch.no_grad():
        mine.proxies.copy_(theirs.proxies)
    return mine, theirs


def run(loss, emb, meta=None, seed=3):
    x = emb.clone().requires_grad_(True)
    loss.zero_grad()
    torch.manual_seed(seed)
    value = loss(x, indices_tuple=meta)
    value.backward()
    return value.detach(), x.grad, loss.proxies.grad.clone()


@pytest.mark.parametrize("kwargs", [dict(l=6, K=4), dict(l=6, K=5, lambdaC=0.0, alpha=0.5, margin=0.01),
                                    dict(l=6, K=3, lambdaC=3.0, alpha=0.9, margin=0.0)])
@pytest.mark.parametrize("given_meta", [False, True])
def test_parity(kwargs, given_meta):
    mine, theirs = pair(**kwargs)
    gen = torch.Generator().manual_seed(171)
    emb = torch.randn(12, 6, generator=gen, dtype=torch.float64)
    meta = torch.randint(0, kwargs["K"], (12,), generator=gen) if given_meta else None
    got, want = run(mine, emb, meta), run(theirs, emb, meta)
    assert got[0] > 1e-4
    for g, w, what in zip(got, want, ["value", "embedding gradient", "proxy gradient"]):
        assert_close(g, w, PML_TOL, what)


def test_lambda_inf_is_the_context_term():
    pytest.skip("PML bug: PML computes 0 + inf * context for lambdaC=inf (inf or nan); ours uses the context term")


def test_lambda_inf_uses_only_the_context_term():
    mine, _ = pair(l=6, K=4)
    inf_loss, _ = pair(l=6, K=4, lambdaC=math.inf)
    zero_int, _ = pair(l=6, K=4, lambdaC=1.0)
    emb = torch.randn(10, 6, dtype=torch.float64)
    meta = torch.arange(10) % 4
    both = mine(emb, indices_tuple=meta)
    only_context = inf_loss(emb, indices_tuple=meta)
    assert torch.isfinite(only_context) and 0 < only_context < both


def test_refusals():
    mine, _ = pair(l=6, K=4)
    emb = torch.randn(10, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="takes no labels"):
        mine(emb, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        mine(emb, ref_emb=emb.clone())
    with pytest.raises(ValueError, match="size 5"):
        mine(emb[:, :5])
    with pytest.raises(ValueError, match="meta-class ids in \\[0, 4\\)"):
        mine(emb, indices_tuple=torch.full((10,), 4))
    with pytest.raises(ValueError, match="at least K=4 rows"):
        mine(emb[:3])
    with pytest.raises(ValueError, match="alpha must be in \\(0, 1\\)"):
        ours.ManifoldLoss(l=6, alpha=1.0)
