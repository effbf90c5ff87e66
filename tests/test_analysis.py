"""The analyses of PAPER.md section 6: exact values of the measures, and analyze.py end to end."""

import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax.analysis import diversity
from decouple_jax.analysis import scaling


def test_identical_rows_span_one_direction():
  x = np.tile([[1.0, -2.0, 3.0]], (5, 1))
  assert diversity.collision_entropy(x) == pytest.approx(0.0, abs=1e-12)
  assert diversity.effective_number(x) == pytest.approx(1.0)
  # Scale and sign do not matter: cosine similarity squared.
  assert diversity.effective_number(x * [[1], [2], [-3], [0.5], [7]]) == pytest.approx(1.0)


@pytest.mark.parametrize('n', [1, 2, 4, 7])
def test_orthogonal_rows_span_n_directions(n):
  x = 3.0 * np.eye(8)[:n].reshape(n, 2, 4)
  assert diversity.collision_entropy(x) == pytest.approx(np.log(n))
  assert diversity.effective_number(x) == pytest.approx(n)


def test_two_rows_at_60_degrees():
  # K = [[1, 1/2], [1/2, 1]]: sum K^2 = 2.5, trace 2, H = -log(2.5 / 4).
  x = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])
  assert diversity.collision_entropy(x) == pytest.approx(np.log(1.6))


def test_class_collision_entropy():
  # Class 0: two orthogonal rows (H = log 2); class 1: three copies of one row (H = 0).
  # Class means (0.5, 0.5, 0) and (0, 0, 1) are orthogonal: between = log 2.
  x = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0], [0, 0, 1.0], [0, 0, 5.0]])
  within, between = diversity.class_collision_entropy(x, np.array([0, 0, 1, 1, 1]))
  assert within == pytest.approx(np.log(2) / 2)
  assert between == pytest.approx(np.log(2))


def test_cosine_distance_per_image():
  a = np.array([[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 2.0]]])
  b = np.array([[[3.0, 0.0]], [[0.0, 1.0]], [[-1.0, -1.0]], [[1.0, 1.0]]])
  np.testing.assert_allclose(diversity.cosine_distance(a, b),
                             [0.0, 1.0, 2.0, 1 - np.sqrt(0.5)], atol=1e-12)
  with pytest.raises(ValueError, match='equal shapes'):
    diversity.cosine_distance(a, b[:2])


def test_kept_effective_numbers_over_runs():
  # 3 runs x 2 images. Image 0: all kept, directions e0, e1, e0 -> N_eff 1, 2, 9/5.
  # Image 1: run 0 dropped (p = exp(-2) < 0.5), then two orthogonal directions -> -, 1, 2.
  targets = np.array([[[1.0, 0.0], [5.0, 5.0]],
                      [[0.0, 1.0], [1.0, 1.0]],
                      [[2.0, 0.0], [1.0, -1.0]]])
  loss = np.array([[0.1, 2.0], [0.1, 0.1], [0.1, 0.1]])
  n_eff, images, kept = scaling.kept_effective_numbers(targets, loss)
  np.testing.assert_allclose(n_eff, [1.0, 1.5, (1.8 + 2.0) / 2])
  np.testing.assert_array_equal(images, [1, 2, 2])
  np.testing.assert_allclose(kept, [0.5, 1.5, 2.5])
  n_eff, images, _ = scaling.kept_effective_numbers(targets, loss, threshold=0.99)
  assert np.isnan(n_eff).all() and (images == 0).all()


def test_scaled_search_configs_keep_proportions():
  base = cfglib.SearchConfig()  # 240 = 20 + 100 + 120
  half = scaling.scale_population(base, 120)
  assert (half.population, half.top_k, half.n_explore, half.n_refine) == (120, 10, 50, 60)
  tiny = scaling.scale_population(base, 5)
  assert (tiny.top_k, tiny.n_explore, tiny.n_refine) == (1, 2, 2)
  gens = scaling.scale_generations(base, 0.5)
  assert [l.generations for l in gens.layers] == [150, 50, 50, 5]
  assert [l.generations for l in scaling.scale_generations(base, 0.01).layers] == [3, 1, 1, 1]
  assert gens.layers[0].alpha == base.layers[0].alpha
