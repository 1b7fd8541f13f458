"""Conversions between gptforge model dirs and other ecosystems' formats (Hugging Face GPT-2)."""
