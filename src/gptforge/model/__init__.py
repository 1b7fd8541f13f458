"""The GPT model: config and presets, the network, the KV cache, loading and saving."""
