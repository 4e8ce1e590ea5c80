import numpy as np
import pytest
from scipy import stats

from mosaicvi.metrics import feature_correlation, knn_label_transfer_accuracy


def test_feature_correlation_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    b[:, 0] = a[:, 0] * 2 + 1
    per_feature = feature_correlation(a, b)
    for j in range(4):
        assert per_feature[j] == pytest.approx(stats.pearsonr(a[:, j], b[:, j])[0])
    assert per_feature[0] == pytest.approx(1.0)
    spearman = feature_correlation(a, b, method="spearman", axis=1)
    assert spearman[3] == pytest.approx(stats.spearmanr(a[3], b[3])[0])
    b[:, 1] = 3.0
    assert np.isnan(feature_correlation(a, b)[1])
    with pytest.raises(ValueError, match="method"):
        feature_correlation(a, b, method="kendall")


def test_knn_label_transfer_accuracy():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 50)
    emb = np.where(labels[:, None] == "a", 0.0, 10.0) + rng.normal(size=(100, 2))
    ref = np.arange(100) % 2 == 0
    assert knn_label_transfer_accuracy(emb, labels, ref, ~ref) == 1.0
    shuffled = rng.permutation(labels)
    assert knn_label_transfer_accuracy(emb, shuffled, ref, ~ref) < 0.8
