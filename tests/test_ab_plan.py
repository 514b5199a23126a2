"""The A/B plan: the two-proportion sample size against published values, and the table it writes."""
import math

import pytest
from scipy.stats import norm

from clicks2pref.eval.ab_plan import arm_ctr, impressions_per_arm, markdown, plan


@pytest.mark.parametrize("p1,p2,alpha,power,expected", [
    (0.10, 0.12, 0.05, 0.8, 3841),   # the usual textbook case (Fleiss 4.14, no continuity correction)
    (0.20, 0.25, 0.05, 0.8, 1094),
    (0.05, 0.06, 0.05, 0.9, 10921),
])
def test_sample_size_matches_the_closed_form(p1, p2, alpha, power, expected):
    assert impressions_per_arm(p1, p2, alpha, power) == expected
    # the same formula written out independently
    pbar = (p1 + p2) / 2
    n = (norm.ppf(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar))
         + norm.ppf(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2
    assert impressions_per_arm(p1, p2, alpha, power) == math.ceil(n)


def test_size_grows_with_power_and_shrinks_with_the_lift():
    assert impressions_per_arm(0.1, 0.12, power=0.9) > impressions_per_arm(0.1, 0.12, power=0.8)
    assert impressions_per_arm(0.1, 0.15) < impressions_per_arm(0.1, 0.12)
    assert impressions_per_arm(0.1, 0.1) is None
    with pytest.raises(ValueError):
        impressions_per_arm(0.1, 0.12, alpha=0)


def test_plan_applies_the_relative_lift_to_the_observed_ctr_and_writes_a_table():
    rows = plan(0.2, [{"policy": "grpo", "relative_lift": 0.25, "lift_low": 0.1, "lift_high": 0.4},
                      {"policy": "sft", "relative_lift": 0.05, "lift_low": -0.1, "lift_high": 0.2}], 0.05, 0.8)
    assert rows[0]["arm_ctr"] == pytest.approx(arm_ctr(0.2, 0.25)) == pytest.approx(0.25)
    assert rows[0]["impressions_per_arm"] == impressions_per_arm(0.2, 0.25)
    assert rows[0]["conservative_per_arm"] == impressions_per_arm(0.2, 0.22) > rows[0]["impressions_per_arm"]
    assert rows[1]["conservative_per_arm"] is None  # its CI spans zero
    text = markdown(rows, 0.2, 0.05, 0.8, impressions_per_day=1000)
    assert "model-based" in text and "| grpo | +25.0% |" in text and f"{rows[0]['impressions_per_arm']:,}" in text
