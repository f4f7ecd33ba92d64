"""The control plane over real HTTP on 127.0.0.1: policy, long-poll, publish, auth, history, reports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.controlplane.conftest import (
    BAD_POLICY,
    POLICY_V1,
    POLICY_V2,
    PUBLISH_HEADERS,
    serve_plane,
)

SECRET = "pub-s3cret"


def test_get_policy_has_version_hash_etag_and_304(policy_dir: Path) -> None:
    """GET answers the document with version, hash and ETag; If-None-Match with no wait is a 304."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        response = client.get("/v1/policy")
        assert response.status_code == 200
        body = response.json()
        assert body["version"] == 1
        assert body["hash"].startswith("sha256:")
        assert body["document"]["services"]["payments"]["retry"] == {"attempts": 2}
        etag = response.headers["etag"]
        assert etag == body["etag"]
        again = client.get("/v1/policy", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.headers["etag"] == etag


def test_long_poll_returns_when_a_version_is_published(policy_dir: Path) -> None:
    """A parked long-poll answers 200 with the new version as soon as it is published."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        etag = client.get("/v1/policy").headers["etag"]
        result: dict[str, httpx.Response] = {}

        def watch() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as watcher:
                result["r"] = watcher.get(
                    "/v1/policy", params={"wait": "8s"}, headers={"If-None-Match": etag}
                )

        thread = threading.Thread(target=watch)
        thread.start()
        time.sleep(0.2)
        assert (
            client.put("/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS).status_code == 201
        )
        thread.join(timeout=10)
        assert result["r"].status_code == 200
        assert result["r"].json()["version"] == 2


def test_long_poll_times_out_with_304(policy_dir: Path) -> None:
    """With no change, a long-poll ends with 304 when its wait is over; a bad wait is a 400."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        etag = client.get("/v1/policy").headers["etag"]
        response = client.get(
            "/v1/policy", params={"wait": "100ms"}, headers={"If-None-Match": etag}
        )
        assert response.status_code == 304
        bad = client.get("/v1/policy", params={"wait": "soon"}, headers={"If-None-Match": etag})
        assert bad.status_code == 400
        assert "wait" in bad.json()["error"]


def test_invalid_publish_is_422_with_field_issues_and_old_version_served(policy_dir: Path) -> None:
    """An invalid document is refused with each issue's field and line; version 1 is still served."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        response = client.put("/v1/policy", content=BAD_POLICY, headers=PUBLISH_HEADERS)
        assert response.status_code == 422
        body = response.json()
        assert "version 1 stays in force" in body["error"]
        (issue,) = body["issues"]
        assert issue["field"] == "services.payments.retry.attempts"
        assert issue["line"] == 4
        assert "at least 1" in issue["message"]
        assert client.get("/v1/policy").json()["version"] == 1
        assert (policy_dir / "policy.yaml").read_text() == POLICY_V1


def test_unauthenticated_or_wrong_publish_is_refused(policy_dir: Path) -> None:
    """Publishing with no token is 401, with a read token 403; no answer contains a token."""
    with (
        serve_plane(policy_dir, read_tokens=("reader=r3ad",)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        anonymous = client.put("/v1/policy", content=POLICY_V2)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        wrong = client.post(
            "/v1/policy", content=POLICY_V2, headers={"Authorization": "Bearer guess"}
        )
        assert wrong.status_code == 401
        reader = client.put(
            "/v1/policy", content=POLICY_V2, headers={"Authorization": "Bearer r3ad"}
        )
        assert reader.status_code == 403
        rollback = client.post("/v1/policy/rollback", json={"version": 1})
        assert rollback.status_code == 401
        assert client.get("/v1/policy").status_code == 401
        assert (
            client.get("/v1/policy", headers={"Authorization": "Bearer r3ad"}).json()["version"]
            == 1
        )
        for response in (anonymous, wrong, reader, rollback):
            assert SECRET not in response.text
            assert "r3ad" not in response.text
            assert "guess" not in response.text
        assert client.get("/v1/policy", headers=PUBLISH_HEADERS).json()["version"] == 1


def test_publish_json_with_comment_and_history_and_diff(policy_dir: Path) -> None:
    """A JSON publish is recorded with who and comment; history lists it and diff shows the change."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        doc = {
            "version": 1,
            "services": {
                "payments": {"endpoints": ["http://127.0.0.1:8001"], "retry": {"attempts": 3}}
            },
        }
        published = client.post(
            "/v1/policy", json=doc, headers={**PUBLISH_HEADERS, "X-Mesh-Comment": "more retries"}
        )
        assert published.status_code == 201
        assert (published.json()["version"], published.json()["who"]) == (2, "alice")
        history = client.get("/v1/policy/history").json()
        assert history["current"] == 2
        assert [(v["version"], v["who"], v["comment"]) for v in history["versions"]] == [
            (2, "alice", "more retries"),
            (1, "file", "loaded from policy.yaml"),
        ]
        diff = client.get("/v1/policy/diff", params={"from": 1, "to": 2}).json()["diff"]
        assert "-    retry: {attempts: 2}" in diff
        one = client.get("/v1/policy/history/1").json()
        assert one["text"] == POLICY_V1
        assert client.get("/v1/policy/history/99").status_code == 404


def test_rollback_publishes_the_old_content_as_a_new_version(policy_dir: Path) -> None:
    """POST /v1/policy/rollback {"version": 1} serves version 1's document as version 3."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        client.put("/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
        response = client.post("/v1/policy/rollback", json={"version": 1}, headers=PUBLISH_HEADERS)
        assert response.status_code == 201
        assert response.json()["comment"] == "rollback to version 1"
        current = client.get("/v1/policy").json()
        assert current["version"] == 3
        assert current["document"]["services"]["payments"]["retry"] == {"attempts": 2}
        missing = client.post("/v1/policy/rollback", json={"version": 42}, headers=PUBLISH_HEADERS)
        assert missing.status_code == 404
        garbage = client.post("/v1/policy/rollback", content=b"[", headers=PUBLISH_HEADERS)
        assert garbage.status_code == 400


def test_if_match_guards_against_lost_updates(policy_dir: Path) -> None:
    """A publish with a stale If-Match is refused with 412."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        etag = client.get("/v1/policy").headers["etag"]
        client.put("/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
        stale = client.put(
            "/v1/policy", content=POLICY_V1, headers={**PUBLISH_HEADERS, "If-Match": etag}
        )
        assert stale.status_code == 412


def test_hand_edit_reaches_watchers(policy_dir: Path) -> None:
    """Editing policy.yaml on disk publishes a version that a long-poll receives."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        etag = client.get("/v1/policy").headers["etag"]
        (policy_dir / "policy.yaml").write_text(POLICY_V2)
        response = client.get("/v1/policy", params={"wait": "5s"}, headers={"If-None-Match": etag})
        assert response.status_code == 200
        assert (response.json()["version"], response.json()["who"]) == (2, "file")


def test_reports_feed_the_mesh_view(policy_dir: Path) -> None:
    """A posted report shows up in /v1/mesh as an instance with its policy version and an edge."""
    report = {
        "service": "orders",
        "instance": "orders-1",
        "policy_revision": "1",
        "destinations": {
            "payments": {
                "requests": 10,
                "errors": 2,
                "endpoints": {"http://127.0.0.1:8001": {"breaker": "half-open"}},
            }
        },
    }
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/v1/reports", json=report).status_code == 202
        mesh = client.get("/v1/mesh").json()
        orders = next(s for s in mesh["services"] if s["name"] == "orders")
        assert orders["instances"][0]["policy_revision"] == "1"
        assert orders["instances"][0]["current"] is True
        (edge,) = mesh["edges"]
        # one report: no interval to take rates over yet, so no error ratio (never a since-start one)
        assert (edge["destination"], edge["errors"], edge["error_ratio"]) == ("payments", 2, None)
        assert edge["endpoints"][0]["breaker"] == {"half-open": 1}
        assert mesh["policy"]["version"] == 1
        bad = client.post("/v1/reports", json={"instance": "x"})
        assert bad.status_code == 422
        assert bad.json()["issues"][0]["field"] == "service"


def test_oversized_bodies_are_413(policy_dir: Path) -> None:
    """Policy and report bodies beyond their limits are refused before parsing."""
    with (
        serve_plane(policy_dir, max_report_bytes=1024) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        response = client.post("/v1/reports", content=b"x" * 2048)
        assert response.status_code == 413


def test_dashboard_page_and_health(policy_dir: Path) -> None:
    """The dashboard is served with a strict CSP; / redirects to it; readyz reports the version."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/dashboard/app.js"' in page.text
        assert client.get("/dashboard/app.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/").headers["location"] == "/dashboard"
        ready = client.get("/readyz").json()
        assert (ready["status"], ready["version"], ready["watchers"]) == ("ready", 1, 0)
        assert (ready["read_only"], ready["store_error"]) == (False, None)
        assert ready["store"].startswith("files:")
        assert client.get("/healthz").status_code == 200


def test_no_policy_yet_is_404_and_not_ready(tmp_path: Path) -> None:
    """An empty policy directory serves 404 and readyz 503 until the first publish."""
    with serve_plane(tmp_path / "empty") as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/v1/policy").status_code == 404
        assert client.get("/readyz").status_code == 503
        assert (
            client.put("/v1/policy", content=POLICY_V1, headers=PUBLISH_HEADERS).status_code == 201
        )
        assert client.get("/v1/policy").json()["version"] == 1
