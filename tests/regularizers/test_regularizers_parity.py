"""The regularizers equal PML's in value and gradient (float64, 1e-10), with their reducers, distances and
statistics; bad settings raise ValueError naming the value.

Legend: N rows (class weights or embeddings), D their size; rows_ND the input.
"""

from __future__ import annotations

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours_losses
import dmlscale.regularizers as ours
from tests.parity import TOL, assert_close, value_and_grads

pml = pytest.importorskip("pytorch_metric_learning.regularizers")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")

CASES = [
    ("LpRegularizer", {}), ("LpRegularizer", dict(p=1)), ("LpRegularizer", dict(power=2)),
    ("LpRegularizer", dict(p=3, power=0.5)), ("ZeroMeanRegularizer", {}), ("CenterInvariantRegularizer", {}),
    ("RegularFaceRegularizer", {}), ("SparseCentersRegularizer", dict(num_classes=4, centers_per_class=3)),
    ("SparseCentersRegularizer", dict(num_classes=12, centers_per_class=1 + 1)),
]
IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) for name, kwargs in CASES]


def rows(seed: int, num_rows: int = 12, dim: int = 5, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(num_rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def compare(ours_reg, pml_reg, rows_ND) -> float:
    ours_value, (ours_grad,) = value_and_grads(ours_reg, [rows_ND])
    pml_value, (pml_grad,) = value_and_grads(pml_reg, [rows_ND])
    assert_close(ours_value, pml_value, TOL, "value")
    assert_close(ours_grad, pml_grad, TOL, "gradient")
    return float(ours_value)


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_parity(name, kwargs):
    num_rows = 24 if name == "SparseCentersRegularizer" and kwargs["num_classes"] == 12 else 12
    for seed, scale in ((0, 1.0), (1, 4.0), (2, 0.1)):
        value = compare(getattr(ours, name)(**kwargs), getattr(pml, name)(**kwargs), rows(seed, num_rows, scale=scale))
        assert value != 0


@pytest.mark.parametrize("name", ["LpRegularizer", "ZeroMeanRegularizer", "CenterInvariantRegularizer",
                                  "RegularFaceRegularizer"])
@pytest.mark.parametrize("reducer", ["SumReducer", "AvgNonZeroReducer"])
def test_parity_reducers(name, reducer):
    compare(getattr(ours, name)(reducer=getattr(ours_losses, reducer)()),
            getattr(pml, name)(reducer=getattr(pml_reducers, reducer)()), rows(3))


def test_parity_distances():
    compare(ours.CenterInvariantRegularizer(distance=ours_d.LpDistance(p=1, power=1, normalize_embeddings=False)),
            pml.CenterInvariantRegularizer(distance=pml_d.LpDistance(p=1, power=1, normalize_embeddings=False)),
            rows(4))
    compare(ours.RegularFaceRegularizer(distance=ours_d.DotProductSimilarity(normalize_embeddings=False)),
            pml.RegularFaceRegularizer(distance=pml_d.DotProductSimilarity(normalize_embeddings=False)), rows(5))


def test_single_row_and_statistics():
    compare(ours.RegularFaceRegularizer(), pml.RegularFaceRegularizer(), rows(6, num_rows=1))
    compare(ours.LpRegularizer(), pml.LpRegularizer(), rows(6, num_rows=1))
    ours_reg = ours.SparseCentersRegularizer(4, 3, collect_stats=True)
    pml_reg = pml.SparseCentersRegularizer(4, 3, collect_stats=True)
    compare(ours_reg, pml_reg, rows(7))
    for stat in ("same_class_center_sim", "diff_class_center_sim"):
        assert getattr(ours_reg, stat) == pytest.approx(getattr(pml_reg, stat), abs=1e-12)
    assert ours_reg.reducer.divisor == pml_reg.reducer.divisor == 2 * 4 * 3


BAD = [
    (lambda: ours.CenterInvariantRegularizer(distance=ours_d.LpDistance(power=2, normalize_embeddings=False)),
     "power=1"),
    (lambda: ours.CenterInvariantRegularizer(distance=ours_d.LpDistance()), "normalize_embeddings=False"),
    (lambda: ours.CenterInvariantRegularizer(distance=ours_d.CosineSimilarity()), "requires distance LpDistance"),
    (lambda: ours.RegularFaceRegularizer(distance=ours_d.LpDistance()), "needs a similarity"),
    (lambda: ours.SparseCentersRegularizer(4, 1), "centers_per_class must be > 1, got 1"),
    (lambda: ours.SparseCentersRegularizer(0, 2), "num_classes"),
    (lambda: ours.SparseCentersRegularizer(4, 2, distance=ours_d.DotProductSimilarity()), "CosineSimilarity"),
    (lambda: ours.LpRegularizer(p=0), "p must be a positive number, got 0"),
    (lambda: ours.LpRegularizer(power=-1), "power must be a positive number, got -1"),
    (lambda: ours.LpRegularizer(reducer="mean"), "reducer"),
    (lambda: ours.SparseCentersRegularizer(4, 2)(rows(8, num_rows=7)), "expects num_classes \\* centers_per_class = 8"),
    (lambda: ours.LpRegularizer()(torch.ones(3)), "shape"),
]


@pytest.mark.parametrize("build, message", BAD, ids=[m for _, m in BAD])
def test_bad_settings(build, message):
    with pytest.raises(ValueError, match=message):
        build()
