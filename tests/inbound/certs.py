"""A throwaway CA issuing SPIFFE client certificates and a loopback server certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key on disk, plus the certificate as PEM text."""

    cert: Path
    key: Path
    pem: str


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class TestCA:
    """A self-signed CA in `directory`; `issue` writes leaf certificates next to it."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("meshlib test CA"))
            .issuer_name(_name("meshlib test CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *sans: x509.GeneralName) -> Issued:
        """A leaf certificate for `name` with the given subject alternative names."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(pem)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Issued(cert_path, key_path, pem.decode("ascii"))

    def spiffe(self, service: str) -> Issued:
        """A client certificate proving `spiffe://example.org/<service>`."""
        return self.issue(
            service, x509.UniformResourceIdentifier(f"spiffe://example.org/{service}")
        )

    def server(self) -> Issued:
        """A server certificate for 127.0.0.1."""
        return self.issue("server", x509.IPAddress(ipaddress.ip_address("127.0.0.1")))

    def client_context(self, client: Issued | None) -> ssl.SSLContext:
        """A client context trusting this CA, presenting `client` if given."""
        ctx = ssl.create_default_context(cafile=str(self.path))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        return ctx

    def server_context(self, server: Issued) -> ssl.SSLContext:
        """A server context asking for (not requiring) a client certificate signed by this CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(server.cert), str(server.key))
        ctx.load_verify_locations(str(self.path))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx
