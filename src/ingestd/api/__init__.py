"""HTTP: parse, authenticate, call a service, map errors. No domain logic here."""
