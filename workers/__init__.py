"""Celery workers: ``celery -A workers worker`` (see workers/celery_app.py)."""

from workers.celery_app import app

__all__ = ["app"]
