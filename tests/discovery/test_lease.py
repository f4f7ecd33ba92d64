"""The registration lease as a state machine (FakeClock): when to register, renew and back off."""

from __future__ import annotations

from meshlib.clock import FakeClock
from meshlib.discovery.registry import InstanceInfo, LeasePhase, LeaseState


def test_register_then_renew_every_third_of_the_lease() -> None:
    """After registering, renewals fall due every lease/3, so two may fail before it lapses."""
    clock = FakeClock()
    lease = LeaseState(30.0, clock)
    assert lease.next_action() == "register"
    lease.on_registered(30.0)
    assert lease.next_action() is None
    assert lease.wait_time() == 10.0
    clock.advance(10)
    assert lease.next_action() == "renew"
    lease.on_renewed(12.0)  # the server may grant another lease
    assert lease.wait_time() == 4.0
    assert lease.expires_at == clock.monotonic() + 12


def test_lost_lease_registers_again_at_once() -> None:
    """A 404 on renewal (the control plane forgot us) makes the next action an immediate register."""
    clock = FakeClock()
    lease = LeaseState(30.0, clock)
    lease.on_registered(30.0)
    clock.advance(10)
    lease.on_lost()
    assert (lease.phase, lease.next_action(), lease.losses) == (
        LeasePhase.UNREGISTERED,
        "register",
        1,
    )


def test_errors_back_off_within_the_lease_and_notice_a_lapse() -> None:
    """Failed calls retry with doubling waits capped at lease/6; past the lease we register anew."""
    clock = FakeClock()
    lease = LeaseState(3.0, clock)
    lease.on_registered(3.0)
    clock.advance(1)
    waits = []
    for _ in range(5):
        lease.on_error()
        waits.append(round(lease.wait_time(), 3))
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert lease.phase is LeasePhase.REGISTERED
    clock.advance(2)
    lease.on_error()
    assert lease.phase is LeasePhase.UNREGISTERED
    assert lease.failures == 6


def test_draining_stops_renewals() -> None:
    """Once draining, nothing more is due."""
    clock = FakeClock()
    lease = LeaseState(30.0, clock)
    lease.on_registered(30.0)
    lease.drain()
    clock.advance(100)
    assert lease.next_action() is None


def test_instance_body() -> None:
    """The registration body names the instance, URL, zone, identity, metadata and requested lease."""
    info = InstanceInfo("payments", "http://127.0.0.1:9000", instance="p-1", zone="z1")
    assert info.body(1.5) == {
        "instance": "p-1",
        "url": "http://127.0.0.1:9000",
        "zone": "z1",
        "identity": None,
        "metadata": {},
        "lease": "1500ms",
    }
    assert ":" in InstanceInfo("payments", "http://x:1").instance  # host:pid by default


def test_registrar_from_settings() -> None:
    """MESH_* settings name the service, instance, zone, control plane and token; missing ones are errors."""
    import pytest

    from meshlib.discovery.registry import Registrar
    from meshlib.errors import SettingsError
    from meshlib.settings import MeshSettings

    settings = MeshSettings(
        service_name="payments",
        instance_id="p-7",
        zone="z1",
        control_plane_url="http://127.0.0.1:1,http://127.0.0.1:2",
        control_plane_token="t0k",
    )
    registrar = Registrar.from_settings(settings, "http://127.0.0.1:9000", lease=5)
    try:
        assert registrar.info == InstanceInfo("payments", "http://127.0.0.1:9000", "p-7", "z1")
        assert registrar.bases == ("http://127.0.0.1:1", "http://127.0.0.1:2")
        assert registrar.state.requested == 5
    finally:
        registrar.close()
    with pytest.raises(SettingsError, match="MESH_SERVICE_NAME"):
        Registrar.from_settings(MeshSettings(), "http://x:1")
    with pytest.raises(SettingsError, match="MESH_CONTROL_PLANE_URL"):
        Registrar.from_settings(MeshSettings(service_name="p"), "http://x:1")


def test_registrar_fails_over_and_reregisters_after_a_lost_lease(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Against a real control plane: a dead first URL is skipped; a forgotten lease is registered again."""
    from meshlib.clock import FakeClock
    from meshlib.controlplane.instances import InstanceRegistry, RegistryConfig
    from meshlib.discovery.registry import Registrar
    from tests.discovery.conftest import POLICY, plane_app, serve
    from tests.support.servers import free_port

    (tmp_path / "policy.yaml").write_text(POLICY)
    registry = InstanceRegistry(RegistryConfig(register_tokens=("r3g",)))
    clock = FakeClock()
    with serve(plane_app(tmp_path, registry)) as cp:
        registrar = Registrar(
            InstanceInfo("payments", "http://127.0.0.1:9000", instance="p-1"),
            [f"http://127.0.0.1:{free_port()}", cp.url],
            token="r3g",
            lease=30,
            clock=clock,
        )
        try:
            assert registrar.step() == "register"
            assert registrar.state.phase is LeasePhase.REGISTERED
            assert "p-1" in registry.services["payments"]
            assert registrar.step() is None  # nothing due yet
            clock.advance(10)
            assert registrar.step() == "renew"
            assert registrar.state.renewals == 1
            registry.deregister("payments", "p-1")  # e.g. the control plane restarted
            clock.advance(10)
            assert registrar.step() == "renew"
            assert registrar.state.losses == 1
            assert registrar.step() == "register"
            assert "p-1" in registry.services["payments"]
            bad = Registrar(
                InstanceInfo("payments", "http://x:1"), cp.url, token="nope", clock=clock
            )
            try:
                assert bad.step() == "register"
                assert bad.state.failures == 1
                assert "HTTP 401" in (bad.last_error or "")
            finally:
                bad.close()
        finally:
            registrar.close()


def test_registrar_from_settings_speaks_tls_to_the_control_plane(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With an https control plane, the registrar verifies it with MESH_TLS_CA and registers."""
    from meshlib.controlplane.instances import InstanceRegistry, RegistryConfig
    from meshlib.discovery.registry import Registrar
    from meshlib.security.ca import DevCA
    from meshlib.settings import MeshSettings
    from tests.discovery.conftest import POLICY, plane_app, serve

    ca = DevCA.create("example.org", tmp_path / "ca")
    leaf = ca.issue("controlplane", ips=["127.0.0.1"])
    (tmp_path / "policy.yaml").write_text(POLICY)
    registry = InstanceRegistry(RegistryConfig(register_tokens=("r3g",)))
    tls = {"ssl_certfile": str(leaf.cert_path), "ssl_keyfile": str(leaf.key_path)}
    with serve(plane_app(tmp_path, registry), **tls) as cp:
        assert cp.url.startswith("https://")
        settings = MeshSettings(
            service_name="payments", control_plane_url=cp.url, tls_ca=ca.cert_path
        )
        registrar = Registrar.from_settings(settings, "http://127.0.0.1:9000", token="r3g")
        try:
            assert registrar.step() == "register"
            assert registrar.state.phase is LeasePhase.REGISTERED
        finally:
            registrar.close()
    assert "payments" in registry.services
