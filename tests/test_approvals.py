"""``rollout approvals`` / ``approve`` without a server: what they refuse up front.

With a server, a worker and real runs: tests/e2e/test_approvals.py.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.errors import BadInput, RolloutError
from rollout.phases import approvals as approvals_module
from rollout.phases.approvals import (
    ApprovalRequest,
    PrefectApi,
    api_from_environ,
    approve,
    parse_run_id,
)

# A preview list's fingerprint, typed back with the count.
LIST = ("--expect-list", "7d1e40b2c9a3")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns


def invoke(monkeypatch: pytest.MonkeyPatch, api_url: str | None, *args: str) -> tuple[int, str]:
    if api_url is None:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
    else:
        monkeypatch.setenv("PREFECT_API_URL", api_url)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "args",
    [
        ("approvals",),
        ("approve", "0b6c8a52-9f1e-4c47-a1d2-5b0c3e7f9a10", "--expect", "3", *LIST),
    ],
)
def test_without_prefect_api_url_they_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    code, output = invoke(monkeypatch, None, *args)
    assert code == 2
    assert output.strip().count("\n") == 0 and "PREFECT_API_URL is not set" in output


def test_an_unreachable_server_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}/api"
    code, output = invoke(monkeypatch, url, "approvals", "--format", "json")
    assert code == 2
    assert output.strip().count("\n") == 0
    assert f"cannot reach the Prefect API at {url}" in output


def test_a_password_in_prefect_api_url_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server behind basic auth in the URL itself: the messages show the URL, not its
    password, whether the server is away or the URL cannot be read."""
    port = closed_port()
    code, output = invoke(monkeypatch, f"http://ops:s3cret-pw@127.0.0.1:{port}/api", "approvals")
    assert code == 2 and "s3cret-pw" not in output
    assert f"http://ops:***@127.0.0.1:{port}/api" in output
    code, output = invoke(monkeypatch, "http://ops:s3cret-pw@[::1/api", "approvals")
    assert code == 2 and "s3cret-pw" not in output and "PREFECT_API_URL" in output
    # Pasted unencoded, a `/` in the password: the URL cannot be read, and is named.
    code, output = invoke(monkeypatch, "http://ops:s3cret/pw@127.0.0.1/api", "approvals")
    assert code == 2 and "PREFECT_API_URL" in output
    assert "s3cret" not in output and "ops:***@127.0.0.1/api" in output


def test_approve_takes_only_a_full_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = invoke(
        monkeypatch, "http://127.0.0.1:9/api", "approve", "0b6c8a52", "--expect", "3", *LIST
    )
    assert code == 2 and "give the full id `rollout approvals` lists" in output
    with pytest.raises(BadInput):
        parse_run_id("crafty-lemur")
    assert parse_run_id(" 0B6C8A52-9F1E-4C47-A1D2-5B0C3E7F9A10 ") == (
        "0b6c8a52-9f1e-4c47-a1d2-5b0c3e7f9a10"
    )


def test_a_negative_count_is_bad_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    run = "0b6c8a52-9f1e-4c47-a1d2-5b0c3e7f9a10"
    code, _ = invoke(monkeypatch, "http://127.0.0.1:9/api", "approve", run, "--expect", "-1", *LIST)
    assert code == 2


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ((), "Missing option '--expect-list'"),
        (("--expect-list", "87"), "'87' is not a list's fingerprint"),
        (("--expect-list", "7d1e40b2c9a"), "is not a list's fingerprint (12 hex digits"),
    ],
)
def test_approve_needs_the_list_s_fingerprint_typed_back_as_phase_enforce_does(
    monkeypatch: pytest.MonkeyPatch, typed: tuple[str, ...], said: str
) -> None:
    """The count alone approves any list of that size: the approver types back the
    fingerprint `rollout approvals` shows, as `phase enforce --apply` needs it. Missing
    or not a fingerprint at all: exit 2 before the server is asked (none listens)."""
    run = "0b6c8a52-9f1e-4c47-a1d2-5b0c3e7f9a10"
    url = f"http://127.0.0.1:{closed_port()}/api"
    code, output = invoke(monkeypatch, url, "approve", run, "--expect", "3", *typed)
    assert code == 2
    assert said in " ".join(output.replace("│", " ").split())
    assert "cannot reach" not in output


def test_the_api_key_or_auth_string_goes_in_the_header() -> None:
    with api_from_environ({"PREFECT_API_URL": "https://x/api", "PREFECT_API_KEY": "k"}) as api:
        assert api.client.headers["Authorization"] == "Bearer k"
    with api_from_environ(
        {"PREFECT_API_URL": "http://x/api", "PREFECT_API_AUTH_STRING": "admin:pw"}
    ) as api:
        assert api.client.headers["Authorization"] == "Basic YWRtaW46cHc="
    with pytest.raises(BadInput, match="expected an http"):
        api_from_environ({"PREFECT_API_URL": "127.0.0.1:4200"})


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PREFECT_API_URL": "http://[::1/api"}, "PREFECT_API_URL"),
        ({"PREFECT_API_URL": "http://127.0.0.1:4200:1/api"}, "PREFECT_API_URL"),
        ({"PREFECT_API_KEY": "pnu_s3cret\nX-Injected: 1"}, "PREFECT_API_KEY"),
        ({"PREFECT_API_KEY": "pnu_s3crét"}, "PREFECT_API_KEY"),
    ],
    ids=["unclosed-ipv6", "two-ports", "key-with-header", "key-not-ascii"],
)
@pytest.mark.parametrize(
    "args",
    [
        ("approvals",),
        ("approve", "0b6c8a52-9f1e-4c47-a1d2-5b0c3e7f9a10", "--expect", "3", *LIST),
    ],
)
def test_a_prefect_setting_that_cannot_be_used_is_one_line_naming_it_without_the_key(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], named: str, args: tuple[str, ...]
) -> None:
    """A bad URL was a traceback; a key holding a line break or a character that is not
    ASCII was a traceback too, or refused by the HTTP client in a message repeating it."""
    url = environ.get("PREFECT_API_URL", f"http://127.0.0.1:{closed_port()}/api")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    code, output = invoke(monkeypatch, url, *args)
    assert code == 2, output
    assert output.strip().count("\n") == 0 and "Traceback" not in output
    assert named in output
    assert "s3cret" not in output


def test_the_auth_string_goes_before_the_key_as_prefect_s_client_sends_them() -> None:
    """Both set: Prefect's client (and `rollout doctor`) send the server's basic auth."""
    environ = {
        "PREFECT_API_URL": "http://x/api",
        "PREFECT_API_AUTH_STRING": "admin:pw",
        "PREFECT_API_KEY": "k",
    }
    with api_from_environ(environ) as api:
        assert api.client.headers["Authorization"] == "Basic YWRtaW46cHc="
    # A key file saved with CRLF line ends keeps its CR through $(cat key): dropped, as
    # the whitespace around SENDGRID_API_KEY is.
    with api_from_environ({"PREFECT_API_URL": "http://x/api", "PREFECT_API_KEY": "k\r"}) as api:
        assert api.client.headers["Authorization"] == "Bearer k"


def test_the_request_round_trips_through_json() -> None:
    request = ApprovalRequest("top-100", 87, 120, 13, "/r/a.csv", "phase-preview-top-100", "t")
    assert ApprovalRequest.from_json(request.to_json()) == request


def _api_answering(statuses: list[int]) -> tuple[PrefectApi, list[str]]:
    """A PrefectApi whose server answers these statuses in turn (then 200), no waits."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        status = statuses.pop(0) if statuses else 200
        return httpx.Response(status, json={"ok": status == 200})

    api = PrefectApi("http://prefect.test/api")
    api.client = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    api.retry_waits = (0, 0, 0, 0)
    return api, seen


def test_a_busy_server_is_asked_again_as_prefect_s_client_does() -> None:
    api, seen = _api_answering([503, 502, 429])
    with api:
        assert api.json("POST", "/flow_runs/x/resume", {}) == {"ok": True}
    assert len(seen) == 4


def test_a_server_busy_past_the_retries_fails_with_one_line() -> None:
    api, seen = _api_answering([503] * 10)
    with api, pytest.raises(RolloutError, match="HTTP 503"):
        api.json("GET", "/flow_runs/x")
    assert len(seen) == 5


def test_a_refusal_is_not_asked_again() -> None:
    api, seen = _api_answering([409])
    with api, pytest.raises(RolloutError, match="HTTP 409"):
        api.json("POST", "/flow_runs/x/resume", {})
    assert len(seen) == 1


@pytest.mark.parametrize("accept", [None, 9])
def test_an_approval_over_the_reach_limit_carries_the_unreached_count(
    accept: int | None,
) -> None:
    """The count of accounts never warned goes with the approval only when given (the
    run's schema takes it as optional; within the plan's share it is not asked)."""
    sent: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/flows/name/phase-enforce"):
            return httpx.Response(200, json={"id": "flow-1"})
        if path.endswith("/resume"):
            sent.append(json.loads(request.content))
            return httpx.Response(200, json={"status": "ACCEPT"})
        if "/input/" in path:
            return httpx.Response(404)
        run = {"id": "r", "name": "brave-otter", "flow_id": "flow-1", "state_type": "PAUSED"}
        return httpx.Response(200, json=run)

    api = PrefectApi("http://prefect.test/api")
    api.client = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    with api:
        approve(
            api,
            "r",
            expect=87,
            expect_list="7d1e40b2c9a3",
            approved_by="ana",
            accept_unreached=accept,
        )
    expected = {"expect": 87, "expect_list": "7d1e40b2c9a3", "approved_by": "ana"}
    if accept is not None:
        expected["accept_unreached"] = accept
    assert sent == [{"run_input": expected}]


def test_a_request_keeps_the_unreached_count_and_reads_one_recorded_before_it() -> None:
    request = ApprovalRequest(
        "top-100", 87, 120, 13, "/r/a.csv", "k", "t", unreached=9, over_unreached_limit=True
    )
    assert ApprovalRequest.from_json(request.to_json()) == request
    older = {k: v for k, v in request.to_json().items() if "unreached" not in k}
    assert ApprovalRequest.from_json(older).unreached is None


def _prefect_with_one_waiting_run(timestamp: str, pause_timeout: str) -> PrefectApi:
    """A Prefect server (as Prefect 3 answers: times in ISO with a ``Z``) holding one
    phase-enforce run paused for its approval."""
    run_id = "0b6c8a52-9f1e-4c47-a1d2-5b0c3e7f9a10"
    request = ApprovalRequest(
        "top-100", 87, 29, 24, "/r/a.csv", "phase-preview-top-100", "t", fingerprint="7d1e40b2c9a3"
    )

    def handler(http: httpx.Request) -> httpx.Response:
        path = http.url.path.removeprefix("/api")
        if path == f"/flows/name/{approvals_module.ENFORCE_FLOW}":
            return httpx.Response(200, json={"id": "flow-1"})
        if path == "/flow_runs/filter":
            state = {
                "name": "Suspended",
                "timestamp": timestamp,
                "state_details": {"pause_timeout": pause_timeout},
            }
            return httpx.Response(200, json=[{"id": run_id, "name": "calm-fox", "state": state}])
        if path == f"/flow_runs/{run_id}/input/{approvals_module.REQUEST_INPUT_KEY}":
            return httpx.Response(200, text=json.dumps(request.to_json()))
        return httpx.Response(404, json={})

    api = PrefectApi("http://prefect.test/api")
    api.client = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    return api


def test_approvals_give_their_times_in_utc_without_an_offset_as_every_listing_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README: listings' times are UTC, ISO without an offset in CSV and JSON, and a
    table heads them (UTC). Prefect gives its times with a Z, or another offset."""
    api = _prefect_with_one_waiting_run(
        "2022-02-01T10:00:03.123456Z", "2022-02-01T12:00:03.654321+02:00"
    )
    monkeypatch.setattr(approvals_module, "api_from_environ", lambda: api)
    runner = CliRunner()

    listed = runner.invoke(app, ["approvals", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["waiting_since"] == "2022-02-01T10:00:03"
    assert row["expires"] == "2022-02-01T10:00:03"
    assert row["accounts"] == 87 and row["sessions"] == 29
    # The list's fingerprint, to type back with the count (`rollout approve --expect-list`).
    assert row["list"] == "7d1e40b2c9a3"
    assert "--expect-list LIST" in " ".join(listed.stderr.split())

    api = _prefect_with_one_waiting_run(
        "2022-02-01T10:00:03.123456Z", "2022-02-01T12:00:03.654321+02:00"
    )
    monkeypatch.setattr(approvals_module, "api_from_environ", lambda: api)
    table = runner.invoke(app, ["approvals"])
    assert "waiting_since (UTC)" in table.stdout and "expires (UTC)" in table.stdout
    assert "2022-02-01T10:00:03" in table.stdout and "10:00:03.123456Z" not in table.stdout
