"""Prefect flows: thin orchestration that calls one pipelines function per task."""
