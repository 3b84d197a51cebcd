"""Regularizers for class weights and embeddings, drop-in compatible with pytorch-metric-learning's
`regularizers`: pass one as a loss's `weight_regularizer=` or `embedding_regularizer=`."""

from dmlscale.regularizers.base_regularizer import BaseRegularizer
from dmlscale.regularizers.center_invariant_regularizer import CenterInvariantRegularizer
from dmlscale.regularizers.lp_regularizer import LpRegularizer
from dmlscale.regularizers.regular_face_regularizer import RegularFaceRegularizer
from dmlscale.regularizers.sparse_centers_regularizer import SparseCentersRegularizer
from dmlscale.regularizers.zero_mean_regularizer import ZeroMeanRegularizer

__all__ = ["BaseRegularizer", "CenterInvariantRegularizer", "LpRegularizer", "RegularFaceRegularizer",
           "SparseCentersRegularizer", "ZeroMeanRegularizer"]
