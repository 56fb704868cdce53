"""Reading a run's Markdown artifact, or the runs' logs, back from the Prefect server, for
the flow tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest


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


def logs_since(start: datetime) -> str:
    """Every log line any run sent since ``start``: flows, subflows and tasks."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=start)), limit=200
        )
    return "\n".join(log.message for log in logs)


def run_as_deployed(flow_fn: Any, **parameters: Any) -> tuple[BaseException, str]:
    """Run ``flow_fn`` as a worker's flow-run process does (Prefect's ``run_flow`` with
    the run's logger for the engine's last word): the error it ends with, and the run's
    log on the server."""
    from prefect import get_client
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.flow_engine import run_flow
    from prefect.logging.loggers import flow_run_logger

    start = datetime.now(UTC)
    client: SyncPrefectClient
    with get_client(sync_client=True) as client:
        made = client.create_flow_run(flow_fn, parameters=parameters)
    with pytest.raises(Exception) as raised:
        run_flow(flow_fn, flow_run=made, error_logger=flow_run_logger(made))
    return raised.value, logs_since(start)
