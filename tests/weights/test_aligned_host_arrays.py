"""Host arrays the loaders read weights into are adopted by the CPU device in place (one copy of the model)."""

import jax
import numpy as np

from omni_jax.weights.mapping import HOST_ALIGNMENT, aligned_zeros


def test_aligned_zeros_are_zeros_on_an_aligned_start():
    for shape, dtype in [((3, 5), np.float32), ((2, 7, 3), np.int8), ((0, 4), np.float32), ((), np.float32)]:
        a = aligned_zeros(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and not a.any()
        assert a.size == 0 or a.ctypes.data % HOST_ALIGNMENT == 0


def test_the_cpu_device_adopts_them_without_a_copy():
    a = aligned_zeros((64, 256), np.float32)
    a[:] = 1.5
    b = jax.device_put(a)
    # the same memory: loading a checkpoint holds each weight once (a copy doubled the peak: 21.9 GB for 11.2)
    assert b.unsafe_buffer_pointer() == a.ctypes.data
    np.testing.assert_array_equal(np.asarray(b), a)
