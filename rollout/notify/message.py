"""What a sender is handed: one rendered email to one recipient, and how sending fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Message:
    """A rendered email. ``outbox_id`` ties the delivery back to its notifications row."""

    outbox_id: int
    email: str  # the email's name, e.g. "phase-notice"; a category for the provider
    to_address: str
    to_name: str | None
    subject: str
    text: str
    html: str


class DeliveryFailed(Exception):
    """A message could not be delivered. ``permanent`` failures are not worth retrying later."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Sender(Protocol):
    """Delivers one message and returns the provider's message id, or raises DeliveryFailed."""

    name: str

    def send(self, message: Message) -> str: ...
