"""FastAPI app: OpenAI-compatible routes and platform routes."""
