"""TensorFlow's seeded ``random_normal``, reimplemented in numpy (no TensorFlow needed).

RelGAN's official code (and Texygen's, which it reuses) draws its oracle LSTM from
``tf.random_normal(shape, 0, 1, seed=op_seed)`` under a graph seed; :func:`random_normal`
repeats such a draw so that textgan can build that oracle itself
(:meth:`textgan.oracle.OracleLSTM.relgan_code`).

What TensorFlow does on the CPU (``core/lib/random/philox_random.h`` and
``random_distributions.h``; the op's first run):

* the generator is Philox4x32-10 (Salmon et al., SC 2011) with key ``(seed mod 2^32, seed >>
  32)`` and counter ``(0, 0, seed2 mod 2^32, seed2 >> 32)``; group ``g`` of four outputs uses the
  counter advanced by ``g``;
* each 128-bit result gives four normals by Box-Muller on the pairs ``(x0, x1)``, ``(x2, x3)``:
  ``u1 = max(float(x0), 1e-7)``, ``v = 2 pi float(x1)``, ``r = sqrt(-2 log u1)``, ``(sin v r, cos v
  r)``, where ``float(x)`` puts the low 23 bits of ``x`` in the mantissa of a number in [1, 2)
  and subtracts 1.

TensorFlow evaluates ``log``, ``sin`` and ``cos`` with the C library's single-precision
functions, which are not correctly rounded; here they are correctly rounded (computed in float64,
rounded once). The result equals TensorFlow 2.21.0's draws (Linux, glibc) in 98.5 % of the
values and is within 3 units in the last place (2.4e-7) of the rest (measured on the oracle's
333,320 values; calling the C library's own ``logf`` / ``sincosf`` through ``ctypes`` instead
gave every bit of the 1,024 values tried). The Philox core reproduces the published
known-answer vectors.

References:
    * Salmon, Moraes, Dror, Shaw. Parallel Random Numbers: As Easy as 1, 2, 3. SC 2011.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["philox4x32", "random_normal", "op_seeds"]

_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))  # Philox4x32 multipliers
_W = (0x9E3779B9, 0xBB67AE85)  # key increments (Weyl sequence)
_LOW = np.uint64(0xFFFFFFFF)
_MAXINT32 = 2**31 - 1


def philox4x32(counter: Sequence[np.ndarray], key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """Philox4x32 of ``counter`` (four arrays of 32-bit words, any equal shapes) under ``key``
    (two 32-bit words): ``(4, ...)`` uint32."""
    c = [np.asarray(x, dtype=np.uint64) for x in counter]
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(rounds):
        p0, p1 = _M[0] * c[0], _M[1] * c[2]  # 32 x 32 -> 64-bit products, exact in uint64
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & _LOW,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & _LOW]
        k0, k1 = (k0 + _W[0]) & 0xFFFFFFFF, (k1 + _W[1]) & 0xFFFFFFFF
    return np.stack(c).astype(np.uint32)


def _unit_float(x: np.ndarray) -> np.ndarray:
    """TensorFlow's ``Uint32ToFloat``: [0, 1) from the low 23 bits of ``x``."""
    bits = np.uint32(127 << 23) | (x & np.uint32(0x7FFFFF))
    return bits.view(np.float32) - np.float32(1.0)


def random_normal(shape: Sequence[int], seed: int, seed2: int) -> np.ndarray:
    """The float32 standard normals of TensorFlow's ``RandomStandardNormal`` op with attributes
    ``seed``, ``seed2`` (its first run), shaped ``shape``. See :func:`op_seeds` for the pair
    that ``tf.random_normal(..., seed=s)`` under a graph seed uses."""
    n = int(np.prod(shape, dtype=np.int64))
    groups = np.arange((n + 3) // 4, dtype=np.uint64)
    if groups.size and groups[-1] >> np.uint64(32):
        raise ValueError(f"random_normal: {n} values need more than 2^32 Philox counters")
    zeros = np.zeros_like(groups)
    counter = (groups, zeros, zeros + np.uint64(seed2 & 0xFFFFFFFF),
               zeros + np.uint64((seed2 >> 32) & 0xFFFFFFFF))
    words = philox4x32(counter, (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)).T  # (groups, 4)
    x0, x1 = words[:, 0::2], words[:, 1::2]  # Box-Muller pairs (0, 1) and (2, 3)
    u1 = np.maximum(_unit_float(x0), np.float32(1e-7))
    v = (2.0 * np.pi * _unit_float(x1).astype(np.float64)).astype(np.float32)
    log_u1 = np.log(u1.astype(np.float64)).astype(np.float32)
    r = np.sqrt(np.float32(-2.0) * log_u1)
    v64 = v.astype(np.float64)
    out = np.empty((groups.size, 4), dtype=np.float32)
    out[:, 0::2] = np.sin(v64).astype(np.float32) * r
    out[:, 1::2] = np.cos(v64).astype(np.float32) * r
    return out.reshape(-1)[:n].reshape(tuple(shape))


def op_seeds(graph_seed: int, op_seed: int) -> tuple[int, int]:
    """The ``(seed, seed2)`` attributes TensorFlow gives a random op created with ``seed=op_seed``
    under graph seed ``graph_seed`` (``random_seed.get_seed``): both reduced mod 2^31 - 1."""
    seeds = (graph_seed % _MAXINT32, op_seed % _MAXINT32)
    return (0, _MAXINT32) if seeds == (0, 0) else seeds
