"""The tolerance for comparing two programs that compute the same values in different orders."""

import numpy as np


def assert_close(got, want, terms: int, dtype=np.float32) -> None:
  """Asserts max|got - want| <= terms * eps(dtype) * max|want|.

  Two programs summing the same ``terms`` products in other orders (another blocking, fusion
  or FMA contraction: these differ between CPU families) differ by up to about terms * eps
  times the size of what is summed, the worst case of a float sum. The size is the
  reference's largest magnitude, not each element's: an element near zero after cancellation
  keeps the absolute error of its large terms (chunked and XLA convs differed by 2.7e-3
  relative on such values on an AMD EPYC).
  """
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  scale = np.abs(want).max() if want.size else 0.0
  tol = terms * np.finfo(dtype).eps * scale
  err = np.abs(got - want).max() if want.size else 0.0
  assert err <= tol, (f'max |got - want| = {err:.3g} exceeds {terms} terms x eps x '
                      f'max |want| ({scale:.3g}) = {tol:.3g}')
