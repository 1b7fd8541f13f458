"""An OpenAI-compatible HTTP server over gptforge generation, and a chat page."""
