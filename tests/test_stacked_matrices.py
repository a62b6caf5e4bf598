"""Stacked products (q/k/v, gate/up in one kernel call) equal the separate products bit for bit."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from camelid.quant.qtensor import QTensor, StackedMatrices
from test_kernels import random_weights


def _matrix(rng, name, t, n_out, n_in):
    return QTensor(name, t, (n_out, n_in), random_weights(t, n_out, n_in, rng))


@pytest.mark.parametrize("types", [(T.Q4_1,) * 3, (T.Q4_0,) * 3, (T.Q4_K,) * 2, (T.Q8_0, T.Q8_0, T.Q6_K), (T.F16, T.F16)])
@pytest.mark.parametrize("n_tokens", [1, 5, 9])
def test_stacked_equals_separate(types, n_tokens):
    rng = np.random.default_rng(len(types) * 100 + n_tokens)
    n_in = 256
    rows = [64, 72, 24][:len(types)]  # not all multiples of the kernels' 64-row groups
    parts = [_matrix(rng, f"blk.0.m{i}.weight", t, n, n_in) for i, (t, n) in enumerate(zip(types, rows))]
    alone = [QTensor(p.name, p.ggml_type, p.shape, p.raw) for p in parts]
    stack = StackedMatrices(parts)
    stack.prepare()
    x = rng.standard_normal((n_tokens, n_in)).astype(np.float32) * 3
    for got, a in zip(stack.matmul(x), alone):
        assert got.shape == (n_tokens, a.shape[0])
        assert np.array_equal(got, a.matmul(x))
    same_type = len(set(types)) == 1
    assert (stack.packed is not None) == same_type
