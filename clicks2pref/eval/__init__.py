"""Evaluation: metrics, A/B and GSB against the oracle, calibration, reports."""
