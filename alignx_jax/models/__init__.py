"""Models: the Llama family (Llama 2/3, SmolLM2, Qwen2, Mistral), decoding and sharding rules."""
