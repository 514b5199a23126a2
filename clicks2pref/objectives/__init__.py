"""Losses as pure torch functions: Bradley-Terry, Gaussian (GaRM) and GRPO; no models, no Lightning."""
