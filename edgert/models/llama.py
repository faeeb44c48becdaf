"""Llama family: SmolLM, TinyLlama, Llama 2/3.x, and Mistral (same graph).

llama.cpp's converter permutes the Q and K rows of Llama checkpoints so that RoPE runs in
the normal (adjacent pairs) order; the GGUF is read as it is stored.
"""

from .family import Family

FAMILY = Family(name="llama", archs=("llama", "mistral"), rope_neox=False)
