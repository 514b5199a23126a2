"""clicks2pref: align generative query-suggestion models with user clicks."""

__version__ = "0.1.0"
