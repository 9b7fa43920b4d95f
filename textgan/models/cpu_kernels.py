"""Compiled CPU kernels for the CNN discriminators: RelGAN's convolution + max-over-time, and the
head after the highway's matrix product (highway mix, dropout, the linear output), each with its
backward.

``cpu_kernels.c`` (next to this file) is compiled on first use with the system's C compiler
(``$CC``, else ``cc``; ``-O3 -march=native``) into a shared library cached under
``$TEXTGAN_CACHE`` (default ``~/.cache/textgan``), keyed by the source, the compiler's version
and the CPU, and loaded with :mod:`ctypes`: no libtorch headers (it compiles in about a second),
no OpenMP (batch rows are split over a thread pool of ``torch.get_num_threads()`` workers;
ctypes releases the GIL during the calls). Everything stays on the PyTorch path when
``TEXTGAN_CPU_KERNELS=0``, when no compiler is found or when the build fails (a warning is
logged once, with the compiler's message).

Results agree with the PyTorch path to rounding (the sums run in another order). Per call they
depend on the number of threads only through the order in which the partial sums over rows (the
gradients of the weights, the conv bias and the head's output vector) are added, so a run with a
fixed thread count is bit-reproducible.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "conv_max_pool", "conv_max_pool_backward", "head", "head_backward",
           "supports", "supports_head"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_kernels.c")
_LANES = 16  # columns per vector block in cpu_kernels.c (float32; float64 uses 8)
_MAX_WINDOW = 16  # window elements f * d kept in registers by the forward kernel
_MAX_ROW = 1 << 16  # L * d values per (b, r) row on the kernel's stack

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed = False
_pools: dict[int, ThreadPoolExecutor] = {}


def _cpu_id() -> str:
    """The CPU's model and feature flags (Linux), so that a cache shared between machines never
    hands a ``-march=native`` build to another kind of CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        wanted = ("model name", "flags", "Features", "CPU part")
        lines = sorted({ln for ln in info if ln.split(":")[0].strip() in wanted})
        return "\n".join(lines)
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("TEXTGAN_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "textgan"


def _compile(cc: str, target: Path) -> None:
    """Compile into ``target`` through a temporary file in its folder, renamed at the end
    (atomic: a concurrent build never loads a half-written library)."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, "-O3", "-march=native", "-shared", "-fPIC", "-o", tmp, str(_SOURCE)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> ctypes.CDLL:
    """Load the cached library or compile it. The cache is the user's own folder; when it cannot
    be written, the library is compiled into a fresh private temporary folder and not reused
    (a shared folder such as /tmp could hand over a library planted by another user)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set $CC or install gcc)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.stdout.encode(), _cpu_id().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    target = _cache_dir() / "kernels" / f"cpu_kernels-{key}.so"
    if target.exists():
        return ctypes.CDLL(str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _compile(cc, target)
    except OSError as err:  # not writable: a private folder for this process
        log.info("textgan: kernel cache %s not writable (%s); compiling into a temporary "
                 "folder", target.parent, err)
        target = Path(tempfile.mkdtemp(prefix="textgan-kernels-")) / target.name
        _compile(cc, target)
    return ctypes.CDLL(str(target))


def _declare(lib: ctypes.CDLL) -> None:
    P, I = ctypes.c_void_p, ctypes.c_int64
    for bits in (32, 64):
        fwd = getattr(lib, f"textgan_conv_max_fwd_{bits}")
        fwd.argtypes, fwd.restype = [P, I, I, I, I, I, P, I, I, I, P, P, P, I], ctypes.c_int
        bwd = getattr(lib, f"textgan_conv_max_bwd_{bits}")
        bwd.argtypes = [P, I, I, I, I, I, P, I, I, I, P, P, P, I, P, P, P]
        bwd.restype = ctypes.c_int
        S = ctypes.c_float if bits == 32 else ctypes.c_double
        fwd = getattr(lib, f"textgan_head_fwd_{bits}")
        fwd.argtypes, fwd.restype = [P, P, P, I, S, P, I, I, I, I, I, P], None
        bwd = getattr(lib, f"textgan_head_bwd_{bits}")
        bwd.argtypes, bwd.restype = [P, P, P, I, S, P, P, I, I, I, I, I, P, P, P], None


def available() -> bool:
    """Whether the compiled kernels can be used (built and loaded on the first call)."""
    global _lib, _failed
    if _lib is not None:
        return True
    if _failed or os.environ.get("TEXTGAN_CPU_KERNELS", "1") == "0":
        return False
    with _lock:
        if _lib is None and not _failed:
            try:
                lib = _build()
                _declare(lib)
                _lib = lib
                log.info("textgan: using the compiled CPU kernels for the discriminator")
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _failed = True
                log.warning("textgan: compiled CPU kernels unavailable, using PyTorch ops "
                            "(slower; TEXTGAN_CPU_KERNELS=0 silences this): %s", err)
    return _lib is not None


def _fits(emb: Tensor, weights: list[Tensor]) -> bool:
    if emb.dim() != 4 or any(w.dim() != 4 or w.shape[3] != emb.shape[3] for w in weights):
        return False
    _, L, _, d = emb.shape
    return L * d <= _MAX_ROW and L <= 32767 and all(
        w.dtype == emb.dtype and w.shape[2] * d <= _MAX_WINDOW and w.shape[2] <= L
        for w in weights)


def supports(emb: Tensor, weights: list[Tensor]) -> bool:
    """Whether the kernels take this input: CPU, float32/float64, small windows (``f * d <=
    16``) and rows (``L * d <= 65536``, ``L < 32768``: int16 time steps)."""
    if emb.device.type != "cpu" or emb.dtype not in (torch.float32, torch.float64):
        return False
    return _fits(emb, weights) and available()


def _forget_pools() -> None:
    """In a forked child the parent's pool threads do not exist: start new pools there."""
    _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _executor() -> tuple[int, ThreadPoolExecutor | None]:
    """A pool of ``torch.get_num_threads()`` workers (per calling thread in some builds), one
    per thread count, kept for the process: a pool another thread may be using is never shut
    down."""
    threads = max(1, torch.get_num_threads())
    if threads == 1:
        return 1, None
    with _lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, "textgan-kernel")
    return threads, pool


def _run(job, rows: int) -> list:
    """``job(b0, b1)`` over ``rows`` batch rows, split into one contiguous range per thread
    (one empty range when there are no rows)."""
    threads, pool = _executor()
    parts = max(1, min(threads, rows))
    bounds = [rows * i // parts for i in range(parts + 1)]
    ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
    if pool is None or parts == 1:
        return [job(b0, b1) for b0, b1 in ranges]
    return list(pool.map(lambda r: job(*r), ranges))


def _check(status: int) -> None:
    if status:
        raise MemoryError("a compiled CPU kernel could not allocate its row buffers")


_workspaces = threading.local()


def _workspace(name: str, like: Tensor) -> Tensor:
    """A tensor of ``like``'s shape and dtype kept for the next call of this thread.

    The head's backward writes two ``(N, F)`` intermediates per call (~20 MB each for RelGAN);
    freshly allocated, their pages are faulted in and zeroed by the kernel on first write,
    which took longer than the kernel itself (measured: 24-30 ms against 7 ms into reused
    memory, 1 thread)."""
    cache = getattr(_workspaces, "tensors", None)
    if cache is None:
        cache = _workspaces.tensors = {}
    t = cache.get(name)
    if t is None or t.shape != like.shape or t.dtype != like.dtype:
        t = cache[name] = torch.empty_like(like, memory_format=torch.contiguous_format)
    return t


def _function(name: str):
    """The compiled function ``name`` (building the library if needed)."""
    if not available():
        raise RuntimeError("the compiled CPU kernels are unavailable (see the warning logged "
                           "when they were built, or TEXTGAN_CPU_KERNELS); check supports() "
                           "before calling them")
    return getattr(_lib, name)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _transposed(weight: Tensor) -> tuple[Tensor, int, int]:
    """``(n, 1, f, d)`` -> ``(f d, np)`` contiguous, columns zero-padded to a multiple of 16."""
    n = weight.shape[0]
    np_ = -(-n // _LANES) * _LANES
    wt = weight.new_zeros(weight.shape[2] * weight.shape[3], np_)
    wt[:, :n] = weight.detach().reshape(n, -1).t()
    return wt, n, np_


def conv_max_pool(emb: Tensor, weights: list[Tensor], bias: Tensor) -> tuple[Tensor, Tensor]:
    """``relu(max_t conv + bias)`` of every filter size's VALID convolution, side by side.

    Args:
        emb: ``(B, L, R, d)``.
        weights: ``(n_i, 1, f_i, d)`` each (``nn.Conv2d(1, n_i, (f_i, d), stride=(1, d))``).
        bias: ``(sum n_i,)``, the filters' biases in the same order.

    Returns:
        ``(features, index)``, ``(B, R, sum n_i)`` each: ``relu(max_t sum_{j,e} w[c, 0, j, e]
        emb[b, t + j, r, e] + bias[c])`` and the maximising ``t`` (int16).
    """
    if not _fits(emb, weights):
        raise ValueError(f"conv_max_pool takes (B, L, R, d) inputs with windows f * d <= "
                         f"{_MAX_WINDOW} and L * d <= {_MAX_ROW}; got {tuple(emb.shape)} and "
                         f"weights {[tuple(w.shape) for w in weights]} (check supports() first)")
    emb = emb.detach().contiguous()
    bias = bias.detach().to(emb.dtype).contiguous()
    B, L, R, d = emb.shape
    total = sum(w.shape[0] for w in weights)
    features = emb.new_empty(B, R, total)
    index = torch.empty(B, R, total, dtype=torch.int16)
    prepared = [_transposed(w) for w in weights]
    size = emb.element_size()
    fwd = _function(f"textgan_conv_max_fwd_{size * 8}")

    def job(b0: int, b1: int) -> None:
        col = 0
        for w, (wt, n, np_) in zip(weights, prepared, strict=True):
            _check(fwd(emb.data_ptr(), b0, b1, L, R, d, wt.data_ptr(), n, np_, w.shape[2],
                       bias.data_ptr() + size * col, features.data_ptr() + size * col,
                       index.data_ptr() + 2 * col, total))
            col += n

    _run(job, B)
    return features, index


def conv_max_pool_backward(emb: Tensor, weights: list[Tensor], index: Tensor, features: Tensor,
                           grad: Tensor, need_emb: bool, need_weights: bool
                           ) -> tuple[Tensor | None, list[Tensor] | None, Tensor]:
    """Gradients of :func:`conv_max_pool`'s ``features`` given ``grad`` ``(B, R, sum n_i)``:
    for ``emb`` (``(B, L, R, d)``; ``None`` unless ``need_emb``), each weight (its shape;
    ``None`` unless ``need_weights``) and the bias ``(sum n_i,)``."""
    emb = emb.detach().contiguous()
    grad = grad.detach().to(emb.dtype).contiguous()
    features, index = features.detach().contiguous(), index.contiguous()
    B, L, R, d = emb.shape
    total = grad.shape[-1]
    prepared = [_transposed(w) for w in weights]
    grad_emb = torch.zeros_like(emb) if need_emb else None
    size = emb.element_size()
    bwd = _function(f"textgan_conv_max_bwd_{size * 8}")

    def job(b0: int, b1: int) -> tuple[list[Tensor] | None, Tensor]:
        partial = [wt.new_zeros(wt.shape) for wt, _, _ in prepared] if need_weights else None
        bias = emb.new_zeros(total)
        col = 0
        for i, (w, (wt, n, np_)) in enumerate(zip(weights, prepared, strict=True)):
            _check(bwd(emb.data_ptr(), b0, b1, L, R, d, wt.data_ptr(), n, np_, w.shape[2],
                       grad.data_ptr() + size * col, features.data_ptr() + size * col,
                       index.data_ptr() + 2 * col, total, _ptr(grad_emb),
                       partial[i].data_ptr() if need_weights else None,
                       bias.data_ptr() + size * col))
            col += n
        return partial, bias

    partials = _run(job, B)
    grad_bias = _ordered_sum([p[1] for p in partials])
    grad_weights = None
    if need_weights:
        grad_weights = []
        for i, (w, (_, n, _)) in enumerate(zip(weights, prepared, strict=True)):
            g = _ordered_sum([p[0][i] for p in partials])
            grad_weights.append(g[:, :n].t().reshape(w.shape).to(w.dtype))
    return grad_emb, grad_weights, grad_bias


def _ordered_sum(parts: list[Tensor]) -> Tensor:
    """The threads' partial sums, added in a fixed order."""
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def supports_head(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`head` takes ``x`` ``(N, F)`` and the highway's ``weight``: CPU,
    float32/float64 (both the same), outside autocast (whose reduced-precision product stays
    on the PyTorch path)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if weight.dtype != x.dtype or torch.is_autocast_enabled("cpu"):
        return False
    return available()


def head(H: Tensor, x: Tensor, keep: Tensor | None, threshold: int, scale: float, v: Tensor,
         shared: bool) -> Tensor:
    """``sum_k v[k] m[i, k] (x + sigmoid(g) (relu(h) - x))[i, k]`` for every row ``i``.

    Args:
        H: ``(N, F)`` (``shared``: ``h = g = H``) or ``(N, 2F)`` (``h = H[:, :F]``, ``g =
            H[:, F:]``): the highway's matrix product.
        x: ``(N, F)``, the highway's input.
        keep: ``(N, F)`` uint8 or ``None``: dropout keeps ``[i, k]`` when ``keep >= threshold``
            and multiplies by ``scale`` (``None``: no dropout).
        v: ``(F,)``, the linear output layer(s) folded into one vector.

    Returns:
        ``(N,)``.
    """
    H, x, v = H.detach().contiguous(), x.detach().contiguous(), v.detach().contiguous()
    keep = None if keep is None else keep.contiguous()
    N, F = x.shape
    out = x.new_empty(N)
    fwd = _function(f"textgan_head_fwd_{x.element_size() * 8}")
    _run(lambda i0, i1: fwd(H.data_ptr(), x.data_ptr(), _ptr(keep), threshold, scale,
                            v.data_ptr(), i0, i1, F, H.shape[1], int(shared), out.data_ptr()), N)
    return out


def head_backward(H: Tensor, x: Tensor, keep: Tensor | None, threshold: int, scale: float,
                  v: Tensor, grad: Tensor, shared: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`head` given ``grad`` ``(N,)``: for ``H`` (its shape), for ``x``
    through the highway's mix only (``(N, F)``; the caller adds the product's part, ``grad_H @
    W``) and for ``v`` (``(F,)``).

    The first two are this thread's workspaces (see :func:`_workspace`), overwritten by the
    next call: use them, do not keep them."""
    H, x, v = H.detach().contiguous(), x.detach().contiguous(), v.detach().contiguous()
    keep = None if keep is None else keep.contiguous()
    grad = grad.detach().to(x.dtype).contiguous()
    N, F = x.shape
    grad_H, grad_x = _workspace("head_H", H), _workspace("head_x", x)
    bwd = _function(f"textgan_head_bwd_{x.element_size() * 8}")

    def job(i0: int, i1: int) -> Tensor:
        partial = x.new_zeros(F)
        bwd(H.data_ptr(), x.data_ptr(), _ptr(keep), threshold, scale, v.data_ptr(),
            grad.data_ptr(), i0, i1, F, H.shape[1], int(shared), grad_H.data_ptr(),
            grad_x.data_ptr(), partial.data_ptr())
        return partial

    return grad_H, grad_x, _ordered_sum(_run(job, N))
