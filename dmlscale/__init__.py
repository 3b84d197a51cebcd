"""dmlscale: distributed, large-scale contrastive and deep-metric-learning pretraining."""

__version__ = "0.1.0"
