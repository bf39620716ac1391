"""Resumable uploads: sessions, blocks, verification and assembly of the master."""
