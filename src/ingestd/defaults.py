"""Defaults the server and the client must agree on; no imports, so both load it cheaply."""

from __future__ import annotations

DATA_DIR = ".ingestd"  # relative to the working directory
LOCAL_OWNER = "local"  # the owner `ingestd serve` creates on first start
LOCAL_KEY_FILE = "local-key"  # that owner's key, inside the data dir
SERVER_URL = "http://127.0.0.1:8000"
