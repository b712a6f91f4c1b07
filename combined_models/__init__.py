"""combined-models: one model name backed by the same model at several providers, with failover."""

__version__ = "0.1.0"
