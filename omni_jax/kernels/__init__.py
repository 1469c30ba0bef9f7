"""CPU kernels that XLA:CPU cannot express at memory speed, compiled on first use and called through the XLA FFI.

XLA:CPU copies every dynamic slice of a weight stack before a dot reads it (docs/performance.md §1), so a
decode step that multiplies by the few experts a token chose copies those experts first and then reads the
copy: ~8 GB/s where the machine reads 23–25 GB/s. ``moe_experts`` (``cpu/moe_experts.cc``) computes the
routed SwiGLU experts for a few tokens reading each chosen expert where it lies in the stack. ``matmul``
(``cpu/matmul.cc``) is ``x @ w`` for a few rows: XLA:CPU's dot streams a weight at ~17 GB/s for one row and
~7 GB/s for 25 rows, the kernel at the machine's ~25 GB/s. Both share ``cpu/grouped_matmul.cc``.
``decode_attention`` (``cpu/decode_attention.cc``) is a decode step's attention against a layer of the stacked KV
cache in one pass, where XLA:CPU transposes the layer's K and V and runs a dozen small ops.

They apply only to float32 programs traced for a single CPU device (``usable_here``); programs lowered for
other platforms keep XLA's ops (``jax.lax.platform_dependent``), and sharded programs never call them.

The C++ source ships with the package and is compiled with the system's C++ compiler the first time a process
asks for it, into ``<cache>/kernels/<hash>.so`` (``omni_jax.paths.cache_root``; the hash covers the source,
the compiler, the flags, jaxlib and this CPU). Without a compiler, or with ``OMNI_JAX_CPU_KERNELS=0``, the
callers keep their pure-XLA path: the kernels change speed, never results beyond float32 summation order.
"""

from omni_jax.kernels.attention import decode_attention, decode_attention_usable
from omni_jax.kernels.build import available, fingerprint, kernels_enabled, usable_here
from omni_jax.kernels.matmul import matmul, matmul_shared, matmul_usable
from omni_jax.kernels.moe import moe_experts, moe_experts_usable, moe_experts_xla

__all__ = ["available", "decode_attention", "decode_attention_usable", "fingerprint", "kernels_enabled", "matmul",
           "matmul_shared", "matmul_usable", "moe_experts", "moe_experts_usable", "moe_experts_xla", "usable_here"]
