"""K-quant writers, read back by gguf.quants: error bounded, edge cases exact."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from edgert.converters.kquants import quantize_q4_k, quantize_q6_k

# relative RMS error on Gaussian rows: 4-bit codes with min/max scales (as Q4_1 gets), 6-bit codes
BOUNDS = {T.Q4_K: 0.09, T.Q6_K: 0.025}
WRITERS = {T.Q4_K: quantize_q4_k, T.Q6_K: quantize_q6_k}


@pytest.mark.parametrize("qtype", list(WRITERS), ids=lambda t: t.name)
def test_round_trip_error(qtype):
    x = (np.random.default_rng(0).standard_normal((16, 768)) * 0.05).astype(np.float32)
    y = quants.dequantize(WRITERS[qtype](x), qtype).reshape(x.shape)
    assert np.sqrt(((y - x) ** 2).mean() / (x**2).mean()) < BOUNDS[qtype]


@pytest.mark.parametrize("qtype", list(WRITERS), ids=lambda t: t.name)
@pytest.mark.parametrize("fill", [0.0, 1.0, -2.5])
def test_constant_rows(qtype, fill):
    x = np.full((2, 256), fill, np.float32)
    y = quants.dequantize(WRITERS[qtype](x), qtype).reshape(x.shape)
    np.testing.assert_allclose(y, x, atol=abs(fill) * 0.02 + 1e-7)


def test_mixed_signs_and_outliers():
    x = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
    x[:, 7] = 40.0  # one outlier per row dominates its sub-block
    for qtype, f in WRITERS.items():
        y = quants.dequantize(f(x), qtype).reshape(x.shape)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y[:, 7], 40.0, rtol=0.05)
