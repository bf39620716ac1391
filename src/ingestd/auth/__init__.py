"""Owners, API keys and signed URLs."""
