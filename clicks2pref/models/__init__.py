"""Model registry, loading and generation."""
