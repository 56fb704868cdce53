"""rollout doctor's worker and SendGrid checks against a real Prefect server (the
package's harness), so the REST calls they make are the ones Prefect answers, not only
what a stub says."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from rollout.core.config import load_settings
from rollout.dev.sendgrid_api import DevSendGrid
from rollout.ops import doctor
from rollout.ops.doctor import Status, check_sendgrid, check_worker


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
        # Alive, but asking only the shard queue for runs (a worker of another machine).
        client.create_work_queue("notify-shards", work_pool_name=pool)
        client.get_scheduled_flow_runs_for_work_pool(pool, work_queue_names=["notify-shards"])
        shards_only = until_polled(client, pool, "notify-shards")
        assert shards_only.status is Status.fail
        assert "no worker polls the queue default" in shards_only.detail

        # Asking every queue of the pool, as the ROLLOUT_HOME host's worker does.
        client.get_scheduled_flow_runs_for_work_pool(pool)
        live = until_polled(client, pool, "default")
        assert live.status is Status.ok and "doctor-test-worker" in live.detail

        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        paused = check_worker(api_environ())
        assert paused.status is Status.fail and "paused" in paused.detail


def until_polled(client: object, pool: str, queue: str) -> doctor.CheckResult:
    """The check once the server has recorded the poll of ``queue`` (a background task
    of the server marks it, a moment after the worker's request)."""
    deadline = time.monotonic() + 30
    while client.read_work_queue_by_name(queue, work_pool_name=pool).last_polled is None:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"the server never recorded a poll of {queue}"
        time.sleep(0.2)
    return check_worker(api_environ())


def test_the_sendgrid_check_reads_the_notify_flow_s_secret_block(
    prefect_server: None, tmp_path: Path
) -> None:
    """The REST call the check makes for the block is the one Prefect answers, with the
    value a `Secret(...).save(...)` stored (runbook section 9)."""
    from prefect.blocks.system import Secret

    name = f"doctor-{uuid.uuid4().hex[:8]}"
    key = "SG.doctor-prefect.key"
    Secret(value=key).save(name, overwrite=True)
    environ = {**api_environ(), "ROLLOUT_SENDGRID_SECRET_BLOCK": name}
    with DevSendGrid(key) as dev:
        settings = load_settings({"ROLLOUT_HOME": str(tmp_path), "ROLLOUT_SENDGRID_URL": dev.url})
        result = check_sendgrid(settings, environ)
    assert result.status is Status.ok and f"Secret block {name!r}" in result.detail
    Secret(value="SG.another.key").save(name, overwrite=True)
    with DevSendGrid(key) as dev:
        settings = load_settings({"ROLLOUT_HOME": str(tmp_path), "ROLLOUT_SENDGRID_URL": dev.url})
        assert check_sendgrid(settings, environ).status is Status.fail


def test_an_empty_secret_block_setting_names_the_default_block_for_the_flow_and_doctor(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ROLLOUT_SENDGRID_SECRET_BLOCK=` (an environment file's line left empty) is the
    setting unset, as an empty SENDGRID_API_KEY is no key: the notify flow and doctor
    both read the default block. The flow asked Prefect for a block named '' and sent
    nothing (the file outbox), while doctor checked the default's key and said ok."""
    from prefect.blocks.system import Secret

    from flows import notify as notify_flows
    from rollout.notify import senders

    default = f"doctor-default-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(senders, "SECRET_BLOCK", default)
    monkeypatch.setattr(notify_flows, "SECRET_BLOCK", default)
    key = "SG.default-block.key"
    Secret(value=key).save(default, overwrite=True)
    environ = {**api_environ(), "ROLLOUT_SENDGRID_SECRET_BLOCK": ""}
    with DevSendGrid(key) as dev:
        settings = load_settings({"ROLLOUT_HOME": str(tmp_path), "ROLLOUT_SENDGRID_URL": dev.url})
        checked = check_sendgrid(settings, environ)
        sending = notify_flows.settings_with_secret(settings, environ)
    assert checked.status is Status.ok and f"Secret block {default!r}" in checked.detail
    assert sending.sendgrid_api_key is not None
    assert sending.sendgrid_api_key.get_secret_value() == key
