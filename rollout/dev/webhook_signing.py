"""Signing Event Webhook posts as SendGrid does, for the local server and the tests.

SendGrid signs ``timestamp + body`` with ECDSA (P-256, SHA-256) and sends the base64
DER signature and the timestamp in two headers; its settings page shows the public key
as base64 DER. :class:`WebhookSigner` makes a key pair and signs posts the same way.
"""

from __future__ import annotations

import base64
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


class WebhookSigner:
    def __init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """The verification key as SendGrid shows it (ROLLOUT_SENDGRID_WEBHOOK_KEY)."""
        der = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The two headers SendGrid sends with ``body``, signed at ``timestamp`` (now)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self._private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: stamp,
            "Content-Type": "application/json",
        }
