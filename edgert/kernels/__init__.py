"""Numba kernels. Compilation choices live here, in one place.

- `FASTMATH`: the LLVM fast-math flags every float kernel uses. Reassociation and contraction
  let LLVM vectorize the reductions; no NaN/Inf assumptions (``nnan``/``ninf``) because
  masked attention scores are -inf.
- `CACHE`: kernels are cached on disk (``NUMBA_CACHE_DIR``, set by the CPU backend to
  edgert's cache folder) so only the first run on a machine pays the compile time; that
  first-run cost is reported by ``edgert bench``.
"""

FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}
CACHE = True
