"""Watching what is served: Prometheus metrics (``metrics.py``), per-endpoint request logs (``logs.py``) and
user feedback on completions (``feedback.py``)."""
