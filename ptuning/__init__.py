"""P-Tuning v2 and full fine-tuning of ChatGLM-6B (`python ptuning/main.py`, see ptuning/README.md)."""
