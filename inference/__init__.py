"""The inference service: OpenAI-compatible completions from the platform's GPT, loaded from MLflow or disk."""
