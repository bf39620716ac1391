"""Persistence: the SQLAlchemy model, engine setup and migrations."""
