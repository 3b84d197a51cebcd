"""The identity miner for batches laid out as consecutive triplets: rows (0, 1, 2), (3, 4, 5), ...

Use it to make a triplet loss take exactly the triplets the data loader formed.
"""

from __future__ import annotations

import torch

from dmlscale.miners.base import BaseMiner


class EmbeddingsAlreadyPackagedAsTriplets(BaseMiner):
    """Triplets a = 0, 3, 6, ...; p = 1, 4, 7, ...; n = 2, 5, 8, ... (labels are checked, as in PML, not used).

    The positives and negatives index the batch's own rows; with `ref_emb` they index it too, as in PML,
    so the reference batch must hold those rows. A batch size that is not a multiple of 3 raises.
    """

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor,
             ref_labels: torch.Tensor, query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        batch_size = len(embeddings)
        if batch_size % 3 != 0:
            raise ValueError(
                f"{type(self).__name__} needs a batch of whole triplets (a multiple of 3 rows), got {batch_size} rows"
            )
        if len(ref_emb) < batch_size:
            raise ValueError(
                f"{type(self).__name__}: the positives and negatives index rows up to {batch_size - 1}, "
                f"but ref_emb has {len(ref_emb)} rows"
            )
        start_T = torch.arange(0, batch_size, 3, device=embeddings.device)
        return start_T, start_T + 1, start_T + 2
