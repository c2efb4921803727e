"""CTR metrics against hand-computed values and obvious references: GAUC, logloss, the
weighted AUC behind the bootstrap, and the paired bootstrap differences."""

import math

import numpy as np
import pytest

from mmpipe.eval.classification import (group_auc, log_loss, paired_bootstrap_auc_difference,
                                        paired_bootstrap_group_auc_difference, paired_bootstrap_log_loss_difference,
                                        roc_auc, weighted_auc)


def test_group_auc_by_hand():
    # user a: 3 impressions, clicks ranked 1st of 3 -> AUC 1.0; user b: 4 impressions,
    # 1 click above 1 of 3 non-clicks -> 1/3; user c: only non-clicks -> left out.
    scores = np.array([0.9, 0.2, 0.1, 0.5, 0.6, 0.7, 0.4, 0.3, 0.2])
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0])
    users = np.array(["a", "a", "a", "b", "b", "b", "b", "c", "c"])
    assert group_auc(scores, labels, users) == pytest.approx((3 * 1.0 + 4 * (1 / 3)) / 7)
    assert math.isnan(group_auc(scores[-2:], labels[-2:], users[-2:]))


def test_log_loss_by_hand():
    assert log_loss(np.array([0.8, 0.25]), np.array([1, 0])) == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)
    assert np.isfinite(log_loss(np.array([0.0, 1.0]), np.array([1, 0])))  # clipped, not infinite


def test_weighted_auc_equals_auc_of_the_repeated_rows():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)  # ties on purpose
    labels = rng.random(60) < 0.3
    weights = rng.integers(0, 4, size=(5, 60))
    for row in weights:
        repeated = np.repeat(np.arange(60), row)
        assert weighted_auc(scores, labels, row)[0] == pytest.approx(roc_auc(scores[repeated], labels[repeated]))
    assert np.allclose(weighted_auc(scores, labels, weights),
                       [weighted_auc(scores, labels, row)[0] for row in weights])


def test_paired_bootstrap_differences():
    rng = np.random.default_rng(1)
    n = 3000
    users = rng.integers(0, 100, n)
    truth = rng.normal(size=n)
    labels = rng.random(n) < 1 / (1 + np.exp(-2 * truth))
    good, bad = truth + 0.3 * rng.normal(size=n), truth + 2.0 * rng.normal(size=n)
    c = paired_bootstrap_auc_difference(good, bad, labels, users, n_resamples=200)
    assert c["difference"] == pytest.approx(roc_auc(good, labels) - roc_auc(bad, labels))
    assert 0 < c["difference_ci"][0] <= c["difference"] <= c["difference_ci"][1]
    same = paired_bootstrap_auc_difference(good, good, labels, users, n_resamples=50)
    assert same["difference"] == 0 and same["difference_ci"] == (0.0, 0.0)
    g = paired_bootstrap_group_auc_difference(good, bad, labels, users, n_resamples=200)
    assert g["model"] == pytest.approx(group_auc(good, labels, users)) and g["difference_ci"][0] > 0
    pg, pb = 1 / (1 + np.exp(-2 * good)), 1 / (1 + np.exp(-2 * bad))
    ll = paired_bootstrap_log_loss_difference(pg, pb, labels, users, n_resamples=200)
    assert ll["model"] == pytest.approx(log_loss(pg, labels)) and ll["difference_ci"][1] < 0
