"""`python -m worker.serve`: base models loaded once, LoRA adapters hot-loaded (LRU) and batched together,
behind OpenAI-compatible /v1/chat/completions and /v1/completions (docs/inference.md)."""
