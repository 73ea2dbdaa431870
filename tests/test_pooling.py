import numpy as np
import pytest

from analysis.pooling import zscore_features


def test_zscore_gives_unit_columns_and_keeps_constant_ones_finite():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(-60, 20, 100), rng.uniform(0, 1, 100), np.full(100, 7.0)])
    Z = zscore_features(X)
    np.testing.assert_allclose(Z[:, :2].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(Z[:, :2].std(0), 1, atol=1e-5)
    assert np.all(Z[:, 2] == 0) and Z.dtype == np.float32


def test_zscore_rejects_vectors():
    with pytest.raises(ValueError, match="expected a 2-D"):
        zscore_features(np.ones(3))
