"""Calibration metrics (SPEC 5.6) against independent numpy computations and hand values."""

import math

import numpy as np
import pytest
import torch

from clicks2pref.eval.calibration import (
    accuracy_by_decile,
    btrm_confidence,
    expected_calibration_error,
    garm_confidence,
    reliability_bins,
)


def _numpy_bins(p, y, n_bins):
    """Equal-width bins [k/n, (k+1)/n), the last one closed at 1."""
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    return [(p[idx == k], y[idx == k]) for k in range(n_bins)]


def _numpy_ece(p, y, n_bins):
    bins = [(pk, yk) for pk, yk in _numpy_bins(p, y, n_bins) if len(pk)]
    return sum(len(pk) / len(p) * abs(yk.mean() - pk.mean()) for pk, yk in bins)


@pytest.mark.parametrize("n_bins", [15, 10, 4])
def test_ece_matches_numpy(n_bins):
    rng = np.random.default_rng(n_bins)
    p = rng.uniform(0.0, 1.0, 2000)
    y = (rng.uniform(size=p.size) < p**1.5).astype(int)  # over-confident on purpose
    ece = expected_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=n_bins)
    assert ece.item() == pytest.approx(_numpy_ece(p, y, n_bins), abs=1e-9)


def test_ece_of_a_hand_example():
    # 2 bins: [0, .5) holds .2 (wrong), .4 (right) → |0.5 − 0.3|; [.5, 1] holds .9, .9 (right) → |1 − 0.9|
    ece = expected_calibration_error(torch.tensor([0.2, 0.4, 0.9, 0.9]), torch.tensor([0, 1, 1, 1]), n_bins=2)
    assert ece.item() == pytest.approx(0.5 * 0.2 + 0.5 * 0.1, abs=1e-6)


def test_reliability_bins_match_numpy_and_add_up_to_ece():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1.0, 500)
    y = (rng.uniform(size=p.size) < p).astype(int)
    bins = reliability_bins(torch.tensor(p), torch.tensor(y), n_bins=15)
    for k, (pk, yk) in enumerate(_numpy_bins(p, y, 15)):
        assert bins["count"][k].item() == len(pk)
        assert bins["lower"][k].item() == pytest.approx(k / 15)
        assert bins["upper"][k].item() == pytest.approx((k + 1) / 15)
        if len(pk):
            assert bins["confidence"][k].item() == pytest.approx(pk.mean(), abs=1e-12)
            assert bins["accuracy"][k].item() == pytest.approx(yk.mean(), abs=1e-12)
        else:  # confidences ≥ 0.5 leave the lower bins empty
            assert math.isnan(bins["confidence"][k].item()) and math.isnan(bins["accuracy"][k].item())
    full = bins["count"] > 0
    from_bins = ((bins["accuracy"] - bins["confidence"]).abs() * bins["count"])[full].sum() / len(p)
    ece = expected_calibration_error(torch.tensor(p), torch.tensor(y))
    assert from_bins.item() == pytest.approx(ece.item(), abs=1e-9)


def test_accuracy_by_decile_by_hand():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
    correct = torch.tensor([1, 0, 1, 0, 1, 0, 1, 1, 0, 1])
    out = accuracy_by_decile(scores, correct, n=5)  # sorted pairs: (.1,.2) (.3,.4) (.5,.6) (.7,.8) (.9,1)
    assert out["score"].tolist() == pytest.approx([0.15, 0.35, 0.55, 0.75, 0.95], abs=1e-6)
    assert out["accuracy"].tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert out["count"].tolist() == [2] * 5
    assert accuracy_by_decile(torch.rand(23), torch.ones(23))["count"].tolist() == [3, 3, 3] + [2] * 7


def test_pairwise_confidences_by_hand():
    conf, correct = garm_confidence(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 1.0]),
                                    torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5]))
    z = 1.0 / math.sqrt(1.25)  # |z| of both pairs; the second ranks the rejected item first
    phi = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    assert conf.tolist() == pytest.approx([phi, phi], abs=1e-6) and correct.tolist() == [True, False]
    conf, correct = btrm_confidence(torch.tensor([2.0, 0.0]), torch.tensor([1.5, 1.0]))
    assert conf.tolist() == pytest.approx([1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(-1.0))], abs=1e-6)
    assert correct.tolist() == [True, False]
