"""rollout doctor's worker check against a real Prefect server (the session's harness),
so the REST calls it makes are the ones Prefect answers, not only what a stub says."""

from __future__ import annotations

import uuid

import pytest

from rollout.ops import doctor
from rollout.ops.doctor import Status, check_worker


def api_environ() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value())}


def test_a_worker_heartbeat_makes_the_check_pass(
    prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate

    pool = f"doctor-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(doctor, "WORK_POOL", pool)
    assert check_worker(api_environ()).status is Status.fail  # no such pool yet

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        empty = check_worker(api_environ())
        assert empty.status is Status.fail and "no live worker" in empty.detail

        client.send_worker_heartbeat(pool, "doctor-test-worker", heartbeat_interval_seconds=30)
        live = check_worker(api_environ())
        assert live.status is Status.ok and "doctor-test-worker" in live.detail

        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        paused = check_worker(api_environ())
        assert paused.status is Status.fail and "paused" in paused.detail
