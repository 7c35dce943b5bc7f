"""Durable fine-tuning jobs: a queue in the DB, a scheduler, one worker subprocess per job."""
