"""Serving a trained run over HTTP: `/generate` and an OpenAI-compatible `/v1` API."""
