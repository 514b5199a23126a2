"""LightningModules and the data loaders that feed them."""
