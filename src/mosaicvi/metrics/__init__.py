"""Evaluation helpers that users call too."""

from ._evaluation import (
    expected_calibration_error,
    feature_correlation,
    knn_label_transfer_accuracy,
)

__all__ = ["expected_calibration_error", "feature_correlation", "knn_label_transfer_accuracy"]
