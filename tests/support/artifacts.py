"""Reading a run's Markdown artifact back from the Prefect server, for the flow tests."""

from __future__ import annotations

from typing import Any


def read_artifact(key: str) -> Any:
    """The newest artifact with ``key``; it must exist and be Markdown."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.UPDATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key}"
    assert found[0].type == "markdown"
    return found[0]


def read_markdown(key: str) -> str:
    """The Markdown text of the newest artifact with ``key``."""
    return str(read_artifact(key).data)
