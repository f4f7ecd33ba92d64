"""Replicas over real etcd: revisions as versions, CAS across replicas, leases, outages, stale members."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib.controlplane.etcd_backend import parse_store_url
from meshlib.errors import SettingsError
from tests.controlplane.conftest import (
    POLICY_V1,
    POLICY_V2,
    PUBLISH_HEADERS,
    serve_plane,
    wait_until,
)
from tests.support.delayproxy import DelayProxy
from tests.support.etcd import EtcdCluster

pytestmark = pytest.mark.etcd

REG = {"Authorization": "Bearer r3g"}


def _policy(n: int) -> str:
    return POLICY_V1.replace("attempts: 2", f"attempts: {n}")


def test_store_urls() -> None:
    """etcd:// and etcds:// list members; credentials in the URL are refused with the settings to use."""
    assert parse_store_url("etcd://a:2379,b:2379") == ["http://a:2379", "http://b:2379"]
    assert parse_store_url("etcds://a:2379") == ["https://a:2379"]
    with pytest.raises(SettingsError, match="ETCD_USER"):
        parse_store_url("etcd://root:pw@a:2379")


def test_versions_are_etcd_revisions_with_history_and_rollback(
    policy_dir: Path, etcd_settings: dict[str, Any]
) -> None:
    """A seeded store serves version N = etcd revision; publishes grow it; rollback is a new version."""
    seed = policy_dir / "policy.yaml"
    with (
        serve_plane(seed, **etcd_settings) as server,
        httpx.Client(base_url=server.url, headers=PUBLISH_HEADERS) as client,
    ):
        first = client.get("/v1/policy").json()
        assert (first["who"], first["comment"]) == ("seed", "seeded from policy.yaml")
        v2 = client.put("/v1/policy", content=POLICY_V2).json()["version"]
        back = client.post("/v1/policy/rollback", json={"version": first["version"]}).json()
        assert first["version"] < v2 < back["version"]
        current = client.get("/v1/policy").json()
        assert current["version"] == back["version"]
        assert current["document"]["services"]["payments"]["retry"] == {"attempts": 2}
        history = client.get("/v1/policy/history").json()
        assert [v["version"] for v in history["versions"]] == [
            back["version"],
            v2,
            first["version"],
        ]
        assert client.get(f"/v1/policy/history/{v2}").json()["text"] == POLICY_V2
        assert client.get(f"/v1/policy/history/{v2 + 1000}").status_code == 404
        diff = client.get("/v1/policy/diff", params={"to": v2}).json()  # "the one before": a gap
        assert diff["from"] == first["version"]
        assert "+    retry: {attempts: 3}" in diff["diff"]
        assert client.get("/readyz").json()["store"].startswith("etcd://127.0.0.1:")


def test_cas_across_two_replicas_exactly_one_wins(
    tmp_path: Path, etcd_settings: dict[str, Any]
) -> None:
    """Replicas A and B race publishes with one ETag: exactly one 201; unconditional ones never fail."""
    with serve_plane(tmp_path, **etcd_settings) as a, serve_plane(tmp_path, **etcd_settings) as b:
        assert (
            httpx.put(a.url + "/v1/policy", content=POLICY_V1, headers=PUBLISH_HEADERS).status_code
            == 201
        )
        etag = httpx.get(b.url + "/v1/policy").headers["etag"]
        raced = [(url, n, etag) for n, url in enumerate([a.url, b.url, a.url, b.url], start=3)]
        assert _race_publishes(raced) == [201, 412, 412, 412]
        unconditional = [(url, n, None) for n, url in enumerate([a.url, b.url] * 3, start=4)]
        assert _race_publishes(unconditional) == [201] * 6
        versions = [
            v["version"] for v in httpx.get(a.url + "/v1/policy/history").json()["versions"]
        ]
        assert len(versions) == 1 + 1 + 6
        assert versions == sorted(set(versions), reverse=True)


def _race_publishes(publishes: list[tuple[str, int, str | None]]) -> list[int]:
    """PUT every (replica URL, attempts, If-Match) at the same moment; the sorted statuses."""
    barrier = threading.Barrier(len(publishes))
    statuses: list[int] = []

    def publish(url: str, n: int, if_match: str | None) -> None:
        headers = {**PUBLISH_HEADERS, **({"If-Match": if_match} if if_match else {})}
        with httpx.Client(timeout=10) as client:
            barrier.wait()
            answer = client.put(url + "/v1/policy", content=_policy(n), headers=headers)
            statuses.append(answer.status_code)

    threads = [threading.Thread(target=publish, args=args) for args in publishes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    return sorted(statuses)


def test_a_publish_on_one_replica_wakes_watchers_on_another(
    tmp_path: Path, etcd_settings: dict[str, Any]
) -> None:
    """A long-poll parked on replica B returns at once with what was published through replica A."""
    with serve_plane(tmp_path, **etcd_settings) as a, serve_plane(tmp_path, **etcd_settings) as b:
        httpx.put(a.url + "/v1/policy", content=POLICY_V1, headers=PUBLISH_HEADERS)
        assert wait_until(lambda: httpx.get(b.url + "/v1/policy").status_code == 200)
        etag = httpx.get(b.url + "/v1/policy").headers["etag"]
        result: dict[str, httpx.Response] = {}

        def watch() -> None:
            result["r"] = httpx.get(
                b.url + "/v1/policy",
                params={"wait": "10s"},
                headers={"If-None-Match": etag},
                timeout=15,
            )

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert wait_until(lambda: httpx.get(b.url + "/readyz").json()["watchers"] == 1)
        started = time.monotonic()
        published = httpx.put(a.url + "/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
        watcher.join(timeout=15)
        assert time.monotonic() - started < 5
        assert result["r"].status_code == 200
        assert result["r"].json()["version"] == published.json()["version"]


def test_lease_expiry_removes_an_instance_and_wakes_watchers_on_every_replica(
    tmp_path: Path, etcd_settings: dict[str, Any]
) -> None:
    """Registered through A, renewed through B, lapsed in etcd: B's parked registry watch wakes."""
    settings = {**etcd_settings, "register_tokens": ("r3g",)}
    with serve_plane(tmp_path, **settings) as a, serve_plane(tmp_path, **settings) as b:
        body = {"instance": "p-1", "url": "http://127.0.0.1:9001", "lease": "1s"}
        assert (
            httpx.post(
                a.url + "/v1/registry/payments/instances", json=body, headers=REG
            ).status_code
            == 201
        )
        assert wait_until(
            lambda: len(httpx.get(b.url + "/v1/registry/payments").json()["instances"]) == 1
        )
        renewed = httpx.put(b.url + "/v1/registry/payments/instances/p-1", headers=REG)
        assert renewed.status_code == 200
        listing = httpx.get(b.url + "/v1/registry/payments")
        assert listing.headers["etag"] == httpx.get(a.url + "/v1/registry/payments").headers["etag"]
        started = time.monotonic()
        waited = httpx.get(
            b.url + "/v1/registry/payments",
            params={"wait": "10s"},
            headers={"If-None-Match": listing.headers["etag"]},
            timeout=15,
        )
        assert waited.status_code == 200
        assert waited.json()["instances"] == []
        assert (
            time.monotonic() - started < 5
        )  # the 1 s lease (rounded up by etcd), not the 10 s wait
        lost = httpx.put(b.url + "/v1/registry/payments/instances/p-1", headers=REG)
        assert lost.status_code == 404  # the instance registers again


def test_etcd_outage_makes_replicas_read_only_then_they_recover(tmp_path: Path) -> None:
    """etcd stopped: the replica serves its last version, /readyz says read-only, publishes are 503."""
    with EtcdCluster(tmp_path / "etcd", nodes=1) as cluster:
        settings = {"store": cluster.store_url, "etcd_timeout": 1.0}
        with (
            serve_plane(tmp_path, **settings) as server,
            httpx.Client(base_url=server.url) as client,
        ):
            client.put("/v1/policy", content=POLICY_V1, headers=PUBLISH_HEADERS)
            assert wait_until(lambda: client.get("/v1/policy").status_code == 200)
            version = client.get("/v1/policy").json()["version"]
            cluster.stop(0)
            assert wait_until(lambda: client.get("/readyz").json()["read_only"], timeout=10)
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert (ready.json()["status"], ready.json()["version"]) == ("read-only", version)
            assert ready.json()["store_error"]
            assert client.get("/v1/policy").json()["version"] == version
            refused = client.put("/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
            assert refused.status_code == 503
            cluster.start(0)
            cluster.wait_healthy()
            assert wait_until(lambda: not client.get("/readyz").json()["read_only"], timeout=15)
            published = client.put("/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
            assert published.status_code == 201
            assert published.json()["version"] > version


def test_a_replica_on_a_member_that_missed_publishes_never_serves_an_older_version(
    tmp_path: Path,
) -> None:
    """Member 2 is down while versions are published; a replica started on it serves the newest."""
    with EtcdCluster(tmp_path / "etcd", nodes=3) as cluster:
        everyone = {"store": cluster.store_url, "etcd_timeout": 1.0}
        only_two = {"store": "etcd://" + cluster.url(2).split("://")[1], "etcd_timeout": 1.0}
        with serve_plane(tmp_path, **everyone) as writer:
            httpx.put(writer.url + "/v1/policy", content=POLICY_V1, headers=PUBLISH_HEADERS)
            cluster.stop(2)
            newest = 0
            for n in (3, 4, 5):
                answer = httpx.put(
                    writer.url + "/v1/policy", content=_policy(n), headers=PUBLISH_HEADERS
                )
                newest = answer.json()["version"]
            cluster.start(2)
            with serve_plane(tmp_path, **only_two) as stale:
                first = httpx.get(stale.url + "/v1/policy")
                assert first.json()["version"] == newest  # linearizable: never an older one
                assert first.json()["document"]["services"]["payments"]["retry"] == {"attempts": 5}


def test_three_replicas_one_killed_mid_traffic(
    tmp_path: Path, etcd_settings: dict[str, Any]
) -> None:
    """Kill -9 a watched replica, publish through another: every client applies; the restarted one
    catches up before it answers; a registered instance stays registered throughout."""
    from contextlib import ExitStack

    from meshlib.controlplane.client import ControlPlaneSource
    from meshlib.discovery.registry import InstanceInfo, Registrar
    from meshlib.policy.store import PolicyStore
    from tests.controlplane.conftest import plane_process
    from tests.support.servers import free_port

    (tmp_path / "policy.yaml").write_text(POLICY_V1)  # seeds the empty store (one replica wins)
    env = {
        "store": etcd_settings["store"],
        "etcd_prefix": etcd_settings["etcd_prefix"],
        "register_tokens": "r3g",
        "shutdown_grace": "1",
    }
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    with ExitStack() as stack:
        procs = [stack.enter_context(plane_process(tmp_path, port, **env)) for port in ports]
        seeded = {httpx.get(url + "/v1/policy").json()["version"] for url in urls}
        assert len(seeded) == 1
        stores, sources = [], []
        for i in range(6):  # clients start on different replicas; two watch the victim
            store = PolicyStore()
            order = urls[i % 3 :] + urls[: i % 3]
            source = ControlPlaneSource(order, wait=5.0, backoff_max=0.3, connect_timeout=0.5)
            source.start(store)
            stack.callback(source.close)
            stores.append(store)
            sources.append(source)
        registrar = Registrar(
            InstanceInfo("payments", "http://127.0.0.1:9001", instance="p-1"),
            urls,
            token="r3g",
            lease=3.0,
        )
        stack.callback(registrar.close)
        assert registrar.start(wait=5.0)
        time.sleep(0.3)  # the clients' long-polls are parked, two of them on replica 0
        procs[0].kill()
        procs[0].wait(timeout=10)
        published = httpx.put(urls[1] + "/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
        assert published.status_code == 201
        newest = str(published.json()["version"])
        assert wait_until(lambda: all(s.current.revision == newest for s in stores), timeout=15)
        with plane_process(tmp_path, ports[0], **env):
            first = httpx.get(urls[0] + "/readyz").json()  # plane_process waited for readiness
            assert str(first["version"]) == newest
        time.sleep(3.5)  # longer than the lease: heartbeats kept it alive through other replicas
        listing = httpx.get(urls[2] + "/v1/registry/payments").json()
        assert [i["instance"] for i in listing["instances"]] == ["p-1"]
        assert registrar.state.losses == 0


def test_a_replica_whose_watch_stalls_catches_up_within_the_resync_interval(
    tmp_path: Path, etcd_node: EtcdCluster
) -> None:
    """A watch cut off without breaking (half-open path to etcd): the replica still serves new versions."""
    prefix = f"/test-{uuid.uuid4().hex[:12]}/"
    upstream = int(etcd_node.url(0).rsplit(":", 1)[1])
    with DelayProxy(upstream, delay=0.0) as proxy:
        stalled = {"store": f"etcd://127.0.0.1:{proxy.port}", "etcd_prefix": prefix}
        direct = {"store": etcd_node.store_url, "etcd_prefix": prefix}
        with (
            serve_plane(tmp_path, **direct) as a,
            serve_plane(tmp_path, store_resync=0.3, etcd_timeout=1.0, **stalled) as b,
        ):
            first = httpx.put(a.url + "/v1/policy", content=POLICY_V1, headers=PUBLISH_HEADERS)
            assert wait_until(
                lambda: (
                    httpx.get(b.url + "/v1/policy").json().get("version") == first.json()["version"]
                )
            )
            proxy.freeze()  # b's watch stream (and its idle connections) stop passing anything
            second = httpx.put(a.url + "/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
            assert wait_until(
                lambda: (
                    httpx.get(b.url + "/v1/policy").json().get("version")
                    == second.json()["version"]
                ),
                timeout=10,
            )
            third = httpx.put(a.url + "/v1/policy", content=_policy(4), headers=PUBLISH_HEADERS)
            assert wait_until(
                lambda: (
                    httpx.get(b.url + "/v1/policy").json().get("version") == third.json()["version"]
                ),
                timeout=10,
            )
            assert httpx.get(b.url + "/readyz").json()["watch_restarts"] >= 1
