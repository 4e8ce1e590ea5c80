"""Evaluation helpers that users call too."""

from ._evaluation import feature_correlation, knn_label_transfer_accuracy

__all__ = ["feature_correlation", "knn_label_transfer_accuracy"]
