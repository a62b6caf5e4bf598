"""Quantized weights: their types, quantizers, and the matrix product on them.

- types.py: the type registry (block geometry, byte layouts) and NumPy dequantization.
- activations.py: llama.cpp's rounding of the activations before a product (the NumPy reference).
- encode.py, encode_k.py: the quantizers, float32 rows to GGML blocks (llama.cpp's, byte for byte).
- qtensor.py: QTensor, StackedMatrices, and KERNEL_TABLE: (type, layout, CPU) -> kernel.
- kernels/: the Numba kernels, one file per family (see kernels/__init__.py for the code paths).
"""

from camelid.quant.activations import VEC_DOT_TYPE, fake_quantize, q8_1_sum_correction
from camelid.quant.types import BLOCK_TYPES, SUPPORTED_TYPES, BlockType, block_layout, check_supported, dequantize
from camelid.quant.qtensor import QTensor, load_vector, register_kernel, registered_kernel

__all__ = [
    "BLOCK_TYPES", "SUPPORTED_TYPES", "BlockType", "block_layout", "check_supported", "dequantize",
    "VEC_DOT_TYPE", "fake_quantize", "q8_1_sum_correction",
    "QTensor", "load_vector", "register_kernel", "registered_kernel",
]
