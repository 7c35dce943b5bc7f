"""Base-model catalog (pull, import) and custom models."""
