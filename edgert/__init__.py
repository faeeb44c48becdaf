"""edgert: edge and on-device LLM inference."""

__version__ = "0.1.0"
