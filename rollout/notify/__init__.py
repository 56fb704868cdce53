"""Emails to maintainers: definitions, rendering, the outbox ledger and the senders."""
