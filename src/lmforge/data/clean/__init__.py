"""Cleaning, filtering, deduplication and PII steps for the data pipeline (see `base`)."""
