"""The dev CA and `meshlib ca`: SPIFFE leaves, safe file modes, no silent overwrite, clear errors."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlib.cli import main
from meshlib.errors import CertificateError
from meshlib.security.ca import DevCA


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_and_issue(tmp_path: Path) -> None:
    """A leaf carries the SPIFFE URI, DNS and IP SANs, both EKUs, and is short-lived by default."""
    ca = DevCA.create("example.org", tmp_path)
    issued = ca.issue("payments", dns=["localhost"], ips=["127.0.0.1", "::1"])
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/payments"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=24)
    assert issued.identity == "spiffe://example.org/payments"
    assert issued.chain == (issued.cert_path.read_text(),)
    cert.verify_directly_issued_by(ca.cert)


def test_file_modes(tmp_path: Path) -> None:
    """Keys are 0600 and certificates 0644; no temporary files are left behind."""
    ca = DevCA.create("example.org", tmp_path)
    issued = ca.issue("orders")
    assert _mode(ca.key_path) == 0o600
    assert _mode(issued.key_path) == 0o600
    assert _mode(ca.cert_path) == 0o644
    assert _mode(issued.cert_path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.key",
        "ca.pem",
        "orders.key",
        "orders.pem",
    ]


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    """Existing CA and leaf files are kept unless force is given."""
    ca = DevCA.create("example.org", tmp_path)
    first = ca.issue("orders").cert_path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass force=True") as refused:
        DevCA.create("example.org", tmp_path)
    assert refused.value.filename == str(tmp_path / "ca.pem")
    with pytest.raises(FileExistsError, match=r"orders\.pem'"):
        ca.issue("orders")
    assert ca.issue("orders", force=True).cert_path.read_bytes() != first


def test_load_round_trips_and_reports_missing_files(tmp_path: Path) -> None:
    """A CA loads back with its trust domain; a missing CA says to run `meshlib ca init`."""
    DevCA.create("example.org", tmp_path / "ca")
    assert DevCA.load(tmp_path / "ca").trust_domain == "example.org"
    with pytest.raises(CertificateError, match="run `meshlib ca init` first"):
        DevCA.load(tmp_path / "missing")
    (tmp_path / "ca" / "ca.key").write_text("junk")
    with pytest.raises(CertificateError, match="cannot load the CA key"):
        DevCA.load(tmp_path / "ca")


def test_bad_inputs(tmp_path: Path) -> None:
    """A bad trust domain or IP address is a ValueError naming it."""
    with pytest.raises(ValueError, match="'Bad_Domain' is not a SPIFFE trust domain"):
        DevCA.create("Bad_Domain", tmp_path)
    ca = DevCA.create("example.org", tmp_path)
    with pytest.raises(ValueError, match=r"IP SAN '300\.1\.1\.1'"):
        ca.issue("x", ips=["300.1.1.1"])


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`meshlib ca init` then `meshlib ca issue` write the files and say where they go."""
    certs = str(tmp_path / "certs")
    assert main(["ca", "init", "--trust-domain", "example.org", "--dir", certs]) == 0
    assert (
        main(
            [
                "ca",
                "issue",
                "payments",
                "--dir",
                certs,
                "--dns",
                "localhost",
                "--ip",
                "127.0.0.1",
                "--ttl",
                "2h",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "created the CA for spiffe://example.org" in out
    assert "issued spiffe://example.org/payments, valid 2h" in out
    assert "MESH_TLS_CERT" in out
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "payments.pem").read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["ca", "init", "--trust-domain", "example.org"],
            "certs/ca.pem already exists; pass --force to replace the CA",
        ),
        (["ca", "issue", "ca"], "certs/ca.pem already exists; pass --force to replace it"),
        (["ca", "issue", "x", "--out", "certs/ca.pem"], "certs/ca.pem: File exists"),
        (["ca", "issue", "x", "--ttl", "0s"], "--ttl '0s' must be longer than zero"),
        (["ca", "issue", "x", "--ttl", "soon"], "'soon' is not a duration"),
        (["ca", "issue", "x", "--dir", "nowhere"], "run `meshlib ca init` first"),
        (["ca", "issue", "x", "--ip", "localhost"], "IP SAN 'localhost'"),
        (["ca", "issue", "x", "--dns", "a b"], "DNS SAN 'a b' is not a host name"),
        (["ca", "issue", "x", "--dns=-a.example"], "DNS SAN '-a.example' is not a host name"),
        (["ca", "issue", "x", "--dns", "a..b"], "DNS SAN 'a..b' is not a host name"),
        (["ca", "issue", "x", "--dns", "x" * 64], "is not a host name"),
        (["ca", "issue", "x", "--dns", "*.*.example"], "is not a host name"),
        (["ca", "issue", "x", "--dns", "bücher.example"], "give its IDNA form"),
    ],
)
def test_cli_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    """Each CLI mistake exits 1 with a one-line message on stderr."""
    monkeypatch.chdir(tmp_path)
    assert main(["ca", "init", "--trust-domain", "example.org"]) == 0
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshlib ca: ")
    assert message in err
    assert "force=True" not in err
    assert "Errno" not in err


def test_wildcard_and_plain_host_names_are_issued(tmp_path: Path) -> None:
    """Host names, IDNA A-labels and one leading wildcard label are accepted as DNS SANs."""
    ca = DevCA.create("example.org", tmp_path)
    issued = ca.issue("web", dns=["localhost", "*.svc.example", "xn--bcher-kva.example"])
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "localhost",
        "*.svc.example",
        "xn--bcher-kva.example",
    ]


def test_cli_force_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--force replaces an existing CA."""
    monkeypatch.chdir(tmp_path)
    assert main(["ca", "init", "--trust-domain", "example.org"]) == 0
    before = (tmp_path / "certs" / "ca.pem").read_bytes()
    assert main(["ca", "init", "--trust-domain", "example.org", "--force"]) == 0
    assert (tmp_path / "certs" / "ca.pem").read_bytes() != before
