"""The job engine: work orders in the database, leases, retries, a DAG per asset."""
