"""rectrain: streaming (online, one-pass) training of CTR / recommender models in JAX."""

__version__ = "0.1.0"
