"""An A/B plan from an offline estimate: how many impressions per arm a live test needs to see the lift.

The offline estimate is model-based (`clicks2pref.eval.offline`): its absolute CTR level is only as good
as the click model, but the *relative* lift of a policy over the logged one is what it was built to rank.
So each arm's CTR is the logged policy's observed CTR times (1 + the estimated relative lift), and the
plan is the standard two-sided two-proportion z-test (pooled variance under H0):

    n per arm = (z_{1−α/2} √(2 p̄ (1 − p̄)) + z_{power} √(p₁(1 − p₁) + p₂(1 − p₂)))² / (p₂ − p₁)²,  p̄ = (p₁ + p₂)/2

(Fleiss, Statistical Methods for Rates and Proportions, eq. 4.14 without continuity correction). A second
number uses the end of the lift's CI nearest zero: the size that still detects the lift if it is as small
as the offline evidence allows. No lift, or a CI that spans zero, has no finite conservative size.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from scipy.stats import norm


def impressions_per_arm(p_control: float, p_treatment: float, alpha: float = 0.05, power: float = 0.8
                        ) -> Optional[int]:
    """Impressions per arm for a two-sided two-proportion z-test at `alpha` and `power`; None when the two
    CTRs are equal (no test size detects no difference)."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha {alpha} and power {power} must be in (0, 1)")
    p1, p2 = (min(max(p, 1e-9), 1 - 1e-9) for p in (p_control, p_treatment))
    if abs(p2 - p1) < 1e-12:
        return None
    pbar = (p1 + p2) / 2
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    n = (z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2
    return int(math.ceil(n))


def arm_ctr(logged_ctr: float, relative_lift: float) -> float:
    """The arm's live CTR implied by an estimated relative lift over the logged policy (clipped to [0, 1])."""
    return min(max(logged_ctr * (1 + relative_lift), 0.0), 1.0)


def plan(logged_ctr: float, arms: Sequence[dict], alpha: float = 0.05, power: float = 0.8) -> list[dict]:
    """One row per arm: {"policy", "relative_lift", "lift_ci": (low, high), "control_ctr", "arm_ctr",
    "impressions_per_arm", "conservative_per_arm"} from each arm's estimated relative lift over the logged
    policy (`relative_lift`, with `lift_low`, `lift_high` its CI)."""
    rows = []
    for a in arms:
        lift, low, high = a["relative_lift"], a.get("lift_low"), a.get("lift_high")
        n = impressions_per_arm(logged_ctr, arm_ctr(logged_ctr, lift), alpha, power)
        near = None
        if low is not None and high is not None and low * high > 0:  # the CI excludes zero
            near = low if abs(low) < abs(high) else high
        conservative = impressions_per_arm(logged_ctr, arm_ctr(logged_ctr, near), alpha, power) \
            if near is not None else None
        rows.append({"policy": a["policy"], "relative_lift": lift, "lift_ci": [low, high],
                     "control_ctr": logged_ctr, "arm_ctr": arm_ctr(logged_ctr, lift),
                     "impressions_per_arm": n, "conservative_per_arm": conservative})
    return rows


def markdown(rows: Sequence[dict], logged_ctr: float, alpha: float, power: float, impressions_per_day=None) -> str:
    """`ab_plan.md`: the plan as a table, with what it assumes."""
    def count(n):
        return "—" if n is None else f"{n:,}"

    def pct(x):
        return "—" if x is None else f"{x:+.1%}"

    lines = ["# A/B plan (model-based: from the offline click-model estimate)", "",
             f"Control: the logged policy, observed CTR {logged_ctr:.4f}. Each arm's CTR is that times (1 + its "
             f"estimated relative lift). Two-sided two-proportion z-test, α = {alpha:g}, power = {power:.0%}.", "",
             "| arm | estimated lift | lift CI | arm CTR | impressions per arm | at the CI end nearest 0 |"
             + (" days at the logged traffic |" if impressions_per_day else ""),
             "|---|---|---|---|---|---|" + ("---|" if impressions_per_day else "")]
    for r in rows:
        low, high = r["lift_ci"]
        ci = "—" if low is None else f"[{low:+.1%}, {high:+.1%}]"
        days = ""
        if impressions_per_day:
            days = " — |" if r["impressions_per_arm"] is None else \
                f" {math.ceil(2 * r['impressions_per_arm'] / impressions_per_day):,} |"
        lines.append(f"| {r['policy']} | {pct(r['relative_lift'])} | {ci} | {r['arm_ctr']:.4f} | "
                     f"{count(r['impressions_per_arm'])} | {count(r['conservative_per_arm'])} |{days}")
    lines += ["", "The lift is an offline, model-based estimate (click model: learned examination × the reward "
              "model's attraction); a live test is what confirms it. \"—\": no lift to detect, or a CI that "
              "spans zero."]
    return "\n".join(lines) + "\n"
