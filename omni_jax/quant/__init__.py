"""Weight-only INT8 / INT4 quantization of the MoE expert weights, dequantized inside the MoE backends.

    from omni_jax.quant import quantize_experts, expert_param_bytes
    qtext = quantize_experts(text_params, bits=4, group=128)   # gate_up / down -> QuantizedWeight
    out = thinker_text.text_forward(qtext, cfg, opts, ...)      # same model code, int storage read
"""

from omni_jax.quant.apply import (
    expert_param_bytes, expert_weight_error, param_bytes, quantize_experts, quantize_model_experts, quantize_stack,
)
from omni_jax.quant.weights import (
    DEFAULT_GROUP, QuantizationError, QuantizedWeight, as_float, dequantize, is_quantized, merge_leading,
    pack_int4, quantize, take_leading, unpack_int4,
)

__all__ = [
    "DEFAULT_GROUP", "QuantizationError", "QuantizedWeight", "as_float", "dequantize", "expert_param_bytes",
    "expert_weight_error", "is_quantized", "merge_leading", "pack_int4", "param_bytes", "quantize",
    "quantize_experts", "quantize_model_experts", "quantize_stack", "take_leading", "unpack_int4",
]
