"""Streamed tile math shared by losses and miners (no loss or miner classes here, and no imports of
them, so losses/ and miners/ import kernels at module level without a cycle). One copy of each helper.

- tiles.py: the tile walk over a rows x columns matrix, and TilingSwitch (when a loss or miner streams)
- distance_tiles.py: a distance's values on one tile, label masks, chosen entries (paired values), logits
- label_pairs.py: pairs from labels without a B x R mask: positive pairs by a sort, negative and pair counts
- logsumexp.py: masked log-sum-exp that merges online (lse(a U b) = logaddexp(lse(a), lse(b)))
- clip_siglip.py: CLIP (online row and column log-sum-exps) and SigLIP tile kernels with their backward
- ntxent.py: NT-Xent per-pair losses from streamed positive logits and negative log-sum-exps
- supcon.py: SupCon per-row losses from streamed statistics
- pairs.py: per-row pair statistics: MultiSimilarity rows, contrastive negative hinges as (sum, count)
- batch_all_triplets.py: every valid triplet's term summed as (sum, count), without listing the triplets
- mining.py: streamed hardest / margin triplets (no B x R matrix)
"""
