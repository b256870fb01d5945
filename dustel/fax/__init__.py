"""Fax (F-08): fax to e-mail and the durable mail outbox."""
