"""Queued work: Celery tasks (service mode) or an in-process worker over the same task code (embedded mode)."""
