"""The registry database: models, engine, migrations and set-based actions.

``Registry`` (rollout.registry.handle) is what the library's functions take: one per
invocation. Imported from here on first use, so that importing a module of this package
(the SQLite exporter's child process, say) does not load the migrations with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollout.registry.handle import Registry

__all__ = ["Registry"]


def __getattr__(name: str) -> Any:
    if name == "Registry":
        from rollout.registry.handle import Registry

        return Registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
