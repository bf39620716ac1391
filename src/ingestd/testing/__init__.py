"""Test support shipped with the package: in-process servers, fakes and media generators."""
