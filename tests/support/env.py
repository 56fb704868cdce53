"""The environment a test runs rollout in: none of the outer shell's settings."""

from __future__ import annotations

import os

import pytest


def without_rollout_settings(patch: pytest.MonkeyPatch) -> None:
    """Drop every ``ROLLOUT_*`` setting of the outer environment (not the test suite's
    own ``ROLLOUT_TEST_*``) and ``SENDGRID_API_KEY``: a test must not reach a real
    registry, warehouse or SendGrid account because the shell pointed at one."""
    for name in list(os.environ):
        if name.startswith("ROLLOUT_") and not name.startswith("ROLLOUT_TEST_"):
            patch.delenv(name)
    patch.delenv("SENDGRID_API_KEY", raising=False)
