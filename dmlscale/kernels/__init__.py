"""Streamed tile math shared by losses, miners and monitors (no loss or miner classes here, and no imports of
them, so losses/ and miners/ import kernels at module level without a cycle).

- tiles.py: the tile walk over a rows x columns matrix
- distance_tiles.py: a distance's values on one tile, label masks, paired values
- mining.py: streamed positive pairs, hardest / margin triplets, negative counts (no B x R matrix)
"""
