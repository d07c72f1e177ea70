"""Admin API over every principal's API keys: list with filters, revoke."""
