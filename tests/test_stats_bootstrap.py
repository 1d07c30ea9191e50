"""The one parametric bootstrap helper of lowrank_lm.stats (stats/bootstrap.py)."""

from __future__ import annotations

import numpy as np

from lowrank_lm.stats.bootstrap import chi_scale, noise_scales, replicates


def test_an_array_of_scale_draws_is_the_same_stream_as_single_draws():
    # the laws draw B scales at once where they once drew them one by one; the records stay reproducible
    many = chi_scale(np.random.default_rng(3), 0.02, 4, 50)
    rng = np.random.default_rng(3)
    assert np.array_equal(many, [chi_scale(rng, 0.02, 4) for _ in range(50)])


def test_the_scales_follow_the_chi_square_law_and_respect_both_floors():
    rng = np.random.default_rng(0)
    sig = noise_scales(rng, 20000, 0.01, 3, np.array([0.0, 0.05, 0.0]), seed_sd=0.02, seed_dof=8,
                       count=np.array([1.0, 1.0, 4.0]))
    assert sig.shape == (20000, 3)
    assert np.all(sig[:, 1] >= 0.05)  # a stated error is a floor
    # s^2 dof / chi2(dof) has mean s^2 dof / (dof - 2): 3e-4 for s = 0.01, dof = 3 (point 0 takes the larger of it
    # and the seed floor, so compare the residual draws alone)
    only_residual = noise_scales(np.random.default_rng(1), 200000, 0.01, 3, np.zeros(1))[:, 0]
    assert abs(np.mean(only_residual**2) / 3e-4 - 1) < 0.1
    # the seed floor of a mean of 4 seeds is half that of one seed, draw by draw
    rng = np.random.default_rng(7)
    rng.chisquare(3, size=5)
    seed = np.asarray(chi_scale(rng, 0.02, 8, 5))
    sig = noise_scales(np.random.default_rng(7), 5, 1e-9, 3, np.zeros(3), 0.02, 8, np.array([1.0, 1.0, 4.0]))
    assert np.allclose(sig[:, 0], seed) and np.allclose(sig[:, 2], seed / 2)


def test_no_degrees_of_freedom_and_no_floor_means_no_noise():
    centre = np.array([1.0, 2.0])
    assert np.array_equal(replicates(np.random.default_rng(0), centre, 3, 0.5, 0, np.zeros(2)), np.tile(centre, (3, 1)))
