"""Quantized weights: block layouts and dequantization, llama.cpp's activation rounding, QTensor."""

from camelid.quant.activations import VEC_DOT_TYPE, fake_quantize, q8_1_sum_correction
from camelid.quant.types import BLOCK_TYPES, SUPPORTED_TYPES, BlockType, block_layout, check_supported, dequantize
from camelid.quant.qtensor import QTensor, load_vector, register_kernel, registered_kernel

__all__ = [
    "BLOCK_TYPES", "SUPPORTED_TYPES", "BlockType", "block_layout", "check_supported", "dequantize",
    "VEC_DOT_TYPE", "fake_quantize", "q8_1_sum_correction",
    "QTensor", "load_vector", "register_kernel", "registered_kernel",
]
