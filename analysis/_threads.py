"""Control of BLAS/LAPACK threads for small operations and, optionally, whole computations.

OpenBLAS's threaded eigh/svd/cholesky on D x D matrices (D = 32..1024), its threaded dot
products of 10^4..10^6 elements and its small matrix products are slower than one thread, by up
to 40x on a busy 2-core machine (measured here: eigh of 512 x 512, 2.6 s with 2 threads vs 69 ms
with 1; Cholesky of 512 x 512, 300 ms vs 8 ms), because its threads spin-wait for each other
whenever another process holds a core. ``single_thread_blas`` is used around such calls; large
matrix products keep every thread unless a caller limits all of them with ``blas_threads``.
threadpoolctl ships with scikit-learn (a project dependency): nothing new is installed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

# numpy and scipy each load their own OpenBLAS; both must be loaded before the controller
# scans the process, or scipy.linalg calls would escape the limit.
import numpy.linalg  # noqa: F401
import scipy.linalg  # noqa: F401
from threadpoolctl import ThreadpoolController

# Scanning the loaded libraries once: entering ``limit`` then costs microseconds.
_CONTROLLER = ThreadpoolController()


def single_thread_blas() -> AbstractContextManager:
    """Context manager limiting BLAS/LAPACK to one thread (small decompositions, vector dots)."""
    return _CONTROLLER.limit(limits=1, user_api="blas")


def blas_threads(n: int | None) -> AbstractContextManager:
    """Limit every BLAS/LAPACK call to ``n`` threads inside the block (None: leave as is).

    Use 1 when other processes share the cores (Ray workers do this by default through
    OMP_NUM_THREADS=1); results do not depend on it beyond floating-point summation order.
    """
    if n is None:
        return nullcontext()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"blas_threads: expected a positive int or None, got {n!r}")
    return _CONTROLLER.limit(limits=n, user_api="blas")
