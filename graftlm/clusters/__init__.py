"""Dedicated AI clusters (hosting, fine-tuning), endpoints, and unit-hour metering."""
