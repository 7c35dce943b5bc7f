"""Datasets: formats, streaming validation, tokenization with the chat template, split."""
