"""camelid: run LLaMA-family language models locally on the CPU."""

__version__ = "0.1.0"
