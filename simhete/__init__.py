"""simhete: a calibrated discrete-event simulator of heterogeneous (GPU + CPU) LLM training."""

__version__ = "0.1.0"
