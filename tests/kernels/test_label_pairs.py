"""Pairs from labels without a mask (kernels/label_pairs.py) equal the mask-based pairs of dmlscale.indices."""

import torch

from dmlscale.indices import matches_and_diffs
from dmlscale.kernels.label_pairs import positive_pairs


def test_positive_pairs_from_labels_are_the_mask_in_row_major_order():
    labels = torch.tensor([2, 0, 0, 1, 2, 2, 0])
    ref = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 3])
    for ref_labels, qri in [(labels, torch.arange(7)), (ref, torch.tensor([-1, 0, 4, 2, 1, -1, 7]))]:
        same, _ = matches_and_diffs(labels, ref_labels, qri)
        a, p = positive_pairs(labels, ref_labels, qri)
        expected_a, expected_p = torch.where(same)
        assert torch.equal(a, expected_a) and torch.equal(p, expected_p) and len(a) > 3
