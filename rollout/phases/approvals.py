"""Approvals of ``phase-enforce`` runs, over Prefect's REST API.

A ``phase-enforce`` run previews, then waits (Prefect state Paused, named Suspended when
deployed) for an approval: the previewed account count and list fingerprint typed back,
and the approver's name. ``rollout approvals`` lists the runs waiting, ``rollout
approve`` resumes one.

This module speaks HTTP (httpx) to the server ``PREFECT_API_URL`` names rather than
importing prefect: nothing under rollout/ imports it (tests/test_docs.py). The resume
goes through the endpoint Prefect's own ``resume_flow_run`` uses, so the server checks
the approval against the run's input schema (flows/phases.py ``Approval``) and refuses
a bad one while the run keeps waiting. Whether the count is right is the run's to
check, under the enforce lock: a wrong one ends the run Failed, named ``Refused``, with
the guard's one line as its message.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from rollout.core.clock import naive_utc
from rollout.core.config import prefect_api, url_shown
from rollout.core.controls import quoted
from rollout.core.errors import EXIT_BAD_INPUT, BadInput, GuardRefused, RolloutError

if TYPE_CHECKING:
    from rollout.phases.previews import SavedPreview

ENFORCE_FLOW = "phase-enforce"
# The flow run input the enforce run writes before it waits: what its preview found.
REQUEST_INPUT_KEY = "rollout-approval-request"
# The name of the Failed state a run ends in when a guard refuses its approval.
REFUSED_STATE = "Refused"
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
REQUEST_SECONDS = 30


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approver needs to decide: the preview the run took before it waited."""

    phase: str
    accounts: int
    # The web sessions enforcement would sign out (None: the phase signs nobody out).
    sessions: int | None
    compliant: int
    csv_path: str
    artifact_key: str
    previewed_at: str
    # The tokens the preview would revoke, when the phase revokes tokens (None: it
    # does not). Approving the accounts approves this list too: enforcement refuses
    # if it changed.
    tokens: int | None = None
    # Of the accounts, those no notice or reminder reached (rollout.notify.reach), and
    # whether that is over the plan's limit (the approval then types their count back).
    unreached: int | None = None
    over_unreached_limit: bool = False
    # Which accounts and tokens (PhasePreview.fingerprint): enforcement refuses another
    # list of the same size. None in a request recorded before it existed: counts only.
    fingerprint: str | None = None

    @classmethod
    def from_saved(cls, saved: SavedPreview, artifact_key: str) -> ApprovalRequest:
        return cls(
            phase=saved.preview.phase,
            accounts=saved.preview.count,
            sessions=saved.preview.sessions if saved.preview.signs_out else None,
            compliant=saved.preview.compliant,
            csv_path=str(saved.csv_path),
            artifact_key=artifact_key,
            previewed_at=saved.at.isoformat(),
            tokens=(saved.preview.token_count if saved.preview.revokes_tokens else None),
            unreached=len(saved.preview.unreached),
            over_unreached_limit=saved.preview.over_unreached_limit,
            fingerprint=saved.preview.fingerprint,
        )

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ApprovalRequest:
        fields = cls.__dataclass_fields__
        # A request recorded before a field existed takes the field's default.
        return cls(**{name: value[name] for name in fields if name in value})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Waiting:
    """A ``phase-enforce`` run waiting for its approval."""

    run_id: str
    run_name: str
    state: str  # Suspended (resumes in a new process) or Paused (its process waits)
    # Naive UTC, to the second, as every time the pipeline lists (Prefect gives them
    # with an offset): None when the server gave none.
    waiting_since: datetime | None
    expires: datetime | None
    request: ApprovalRequest | None  # None: a run from before the request was recorded

    def row(self) -> dict[str, Any]:
        request = self.request
        return {
            "run_id": self.run_id,
            "run_name": self.run_name,
            "phase": request.phase if request else None,
            "state": self.state,
            "waiting_since": self.waiting_since,
            "expires": self.expires,
            "accounts": request.accounts if request else None,
            "sessions": request.sessions if request else None,
            "tokens": request.tokens if request else None,
            "unreached": request.unreached if request else None,
            # The fingerprint of the preview's list, typed back with the count.
            "list": request.fingerprint if request else None,
            "preview_csv": request.csv_path if request else None,
            "artifact": request.artifact_key if request else None,
        }


COLUMNS = (
    "run_id",
    "run_name",
    "phase",
    "state",
    "waiting_since",
    "expires",
    "accounts",
    "sessions",
    "tokens",
    "unreached",
    "list",
    "preview_csv",
    "artifact",
)


@dataclass(frozen=True)
class Outcome:
    """Where a resumed run got to."""

    run_id: str
    run_name: str
    state_type: str
    state_name: str
    message: str | None

    @property
    def final(self) -> bool:
        return self.state_type in FINAL_STATES


class PrefectApi:
    """The few calls this module makes, each failing as a one-line :class:`RolloutError`."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.url, headers=dict(headers or {}), timeout=REQUEST_SECONDS
        )

    def __enter__(self) -> PrefectApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    # A busy server answers 503 (its database locked a moment), as do proxies in front
    # of it (502, 504) and rate limits (429); Prefect's own client retries these, and
    # so does this one. The server rolled the request back, so sending it again does
    # nothing twice.
    TRANSIENT = frozenset({429, 502, 503, 504})
    retry_waits: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        for wait in self.retry_waits:
            response = self._send(method, path, body)
            if response.status_code not in self.TRANSIENT:
                return response
            time.sleep(wait)
        return self._send(method, path, body)

    def _send(self, method: str, path: str, body: Any) -> httpx.Response:
        try:
            return self.client.request(method, path, json=body)
        except httpx.HTTPError as error:
            # No server, a wrong port or host: bad input (the URL), not a failed run.
            raise RolloutError(
                f"cannot reach the Prefect API at {url_shown(self.url)} (PREFECT_API_URL): "
                f"{type(error).__name__}: {error}"
            ).with_exit(EXIT_BAD_INPUT) from None

    def json(self, method: str, path: str, body: Any = None) -> Any:
        response = self.call(method, path, body)
        if not response.is_success:
            raise RolloutError(
                f"Prefect API {method} {path}: HTTP {response.status_code} {response.text[:200]}"
            )
        return response.json()


def api_from_environ(environ: Mapping[str, str] = os.environ) -> PrefectApi:
    """The API ``PREFECT_API_URL`` names, with a server's basic auth string or Prefect
    Cloud's key when set (read as Prefect's own client reads them: config.prefect_api)."""
    api = prefect_api(environ)
    if api is None:
        raise BadInput(
            None,
            None,
            "PREFECT_API_URL is not set: set it to the Prefect server's API, "
            "e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
    url, headers = api
    return PrefectApi(url, headers)


def _enforce_flow_id(api: PrefectApi) -> str | None:
    """The ``phase-enforce`` flow's id; None before anything deployed or ran it."""
    response = api.call("GET", f"/flows/name/{ENFORCE_FLOW}")
    if response.status_code == 404:
        return None
    if not response.is_success:
        raise RolloutError(f"Prefect API: HTTP {response.status_code} reading flow {ENFORCE_FLOW}")
    return response.json()["id"]


def _request_of(api: PrefectApi, run_id: str) -> ApprovalRequest | None:
    response = api.call("GET", f"/flow_runs/{run_id}/input/{REQUEST_INPUT_KEY}")
    if response.status_code == 404:
        return None
    if not response.is_success:
        raise RolloutError(f"Prefect API: HTTP {response.status_code} reading run {run_id}")
    try:
        return ApprovalRequest.from_json(json.loads(response.text))
    except (ValueError, KeyError, TypeError):
        return None  # written by another version: list the run without its counts


def _utc_time(value: Any) -> datetime | None:
    """A time from Prefect's API (ISO, with an offset: ``...Z``) as naive UTC, to the
    second; None for none, or one that is not a time."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return naive_utc(moment).replace(microsecond=0)


def _waiting(api: PrefectApi, run: Mapping[str, Any]) -> Waiting:
    state = run.get("state") or {}
    details = state.get("state_details") or {}
    return Waiting(
        run_id=run["id"],
        run_name=run["name"],
        state=state.get("name") or run.get("state_name") or "Paused",
        waiting_since=_utc_time(state.get("timestamp")),
        expires=_utc_time(details.get("pause_timeout")),
        request=_request_of(api, run["id"]),
    )


def waiting_approvals(api: PrefectApi) -> list[Waiting]:
    """Every ``phase-enforce`` run waiting for an approval (Paused or Suspended), the
    longest waiting first."""
    flow_id = _enforce_flow_id(api)
    if flow_id is None:
        return []
    runs = api.json(
        "POST",
        "/flow_runs/filter",
        {
            "flows": {"id": {"any_": [flow_id]}},
            "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
            "limit": 200,
        },
    )
    found = [_waiting(api, run) for run in runs]
    return sorted(found, key=lambda w: w.waiting_since or datetime.min)


def parse_run_id(text: str) -> str:
    """A flow run's full id, as ``rollout approvals`` lists it."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise BadInput(
            None,
            None,
            f"{quoted(text)} is not a flow run id: give the full id `rollout approvals` lists",
        ) from None


def _read_run(api: PrefectApi, run_id: str) -> dict[str, Any]:
    response = api.call("GET", f"/flow_runs/{run_id}")
    if response.status_code == 404:
        raise BadInput(None, None, f"no flow run {run_id} on {api.url}")
    if not response.is_success:
        raise RolloutError(f"Prefect API: HTTP {response.status_code} reading run {run_id}")
    return response.json()


def approve(
    api: PrefectApi,
    run_id: str,
    *,
    expect: int,
    expect_list: str,
    approved_by: str,
    accept_unreached: int | None = None,
) -> Waiting:
    """Resume a waiting ``phase-enforce`` run with an approval: the preview's count and
    list fingerprint typed back (``accept_unreached``: the count of accounts no warning
    reached, when over the plan's limit); returns the run as it waited. Refused (exit 2)
    when the run is not one waiting for an approval or the server's input schema refuses
    the approval; the run then keeps waiting."""
    run = _read_run(api, run_id)
    if run["flow_id"] != _enforce_flow_id(api):
        raise BadInput(None, None, f"flow run {run_id} is not a {ENFORCE_FLOW} run")
    if run.get("state_type") != "PAUSED":
        raise RolloutError(
            f"flow run {run_id} ({run['name']}) is {run.get('state_name')}, not waiting "
            "for an approval"
        ).with_exit(EXIT_BAD_INPUT)
    waiting = _waiting(api, run)
    run_input: dict[str, Any] = {
        "expect": expect,
        "expect_list": expect_list,
        "approved_by": approved_by,
    }
    if accept_unreached is not None:
        run_input["accept_unreached"] = accept_unreached
    result = api.json("POST", f"/flow_runs/{run_id}/resume", {"run_input": run_input})
    status = result.get("status")
    if status == "ACCEPT":
        return waiting
    reason = (result.get("details") or {}).get("reason") or status
    if (result.get("state") or {}).get("type") == "FAILED":
        # The server failed it: it waited past its deadline. Nothing was applied.
        deadline = f" (deadline {waiting.expires} UTC)" if waiting.expires else ""
        raise RolloutError(
            f"flow run {run_id} can no longer be approved: {reason}{deadline}; nothing was "
            "applied, start a new run"
        )
    raise RolloutError(f"the approval of flow run {run_id} was refused: {reason}").with_exit(
        EXIT_BAD_INPUT
    )


def outcome(api: PrefectApi, run_id: str) -> Outcome:
    run = _read_run(api, run_id)
    state = run.get("state") or {}
    return Outcome(
        run_id=run["id"],
        run_name=run["name"],
        state_type=run.get("state_type") or "",
        state_name=run.get("state_name") or "",
        message=state.get("message"),
    )


def wait_for_outcome(
    api: PrefectApi,
    run_id: str,
    *,
    timeout: float,
    poll_seconds: float = 2,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Follow a resumed run until it ends (or waits again), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = outcome(api, run_id)
        # Paused again with a name other than Resuming: waiting on something new.
        if found.final or found.state_type == "PAUSED":
            return found
        if time.monotonic() >= deadline:
            return found
        sleep(poll_seconds)


def raise_for_outcome(found: Outcome) -> None:
    """A run that did not complete as the command's error: exit 3 when a guard refused
    the approval (wrong count, blast radius, lock held), 1 otherwise."""
    if found.state_type == "COMPLETED":
        return
    said = f": {found.message}" if found.message else ""
    if found.state_type == "FAILED" and found.state_name == REFUSED_STATE:
        raise GuardRefused(f"flow run {found.run_name} refused{said}")
    if not found.final:
        raise RolloutError(
            f"flow run {found.run_name} is still {found.state_name}; follow it in the "
            f"Prefect UI or with `prefect flow-run inspect {found.run_id}`"
        )
    raise RolloutError(f"flow run {found.run_name} ended {found.state_name}{said}")
