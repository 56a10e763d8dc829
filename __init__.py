"""ODP: a learned image codec whose quality is chosen after encoding, by cutting the file shorter."""
__version__ = "0.1.0"
