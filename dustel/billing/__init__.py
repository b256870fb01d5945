"""Money: rating (pure) and the prepaid / credit-limit ledger (PostgreSQL)."""
