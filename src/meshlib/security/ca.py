"""A development certificate authority issuing SPIFFE certificates (X509-SVIDs).

For local meshes, examples and tests; production meshes take certificates
from their own PKI (SPIRE, cert-manager, a cloud CA) and point the
`MESH_TLS_*` settings at the files. Keys are EC P-256: fast to make and
accepted everywhere. Leaves are short-lived (24 hours by default) and carry
the SAN URI `spiffe://<trust-domain>/<service>` plus any DNS and IP names:

```python
ca = DevCA.create("example.org", "certs")          # certs/ca.pem, certs/ca.key
issued = ca.issue("payments", dns=["localhost"], ips=["127.0.0.1"])
issued.cert_path, issued.key_path                  # certs/payments.pem, certs/payments.key
```

Keys are written 0600 and certificates 0644, each atomically (a temporary
file renamed into place), so a watcher never reads half a file. Existing
files are kept unless `force=True`.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import CertificateError
from meshlib.security.identity import SpiffeID

__all__ = ["DEFAULT_LEAF_TTL", "DevCA", "IssuedCert", "write_private", "write_public"]

DEFAULT_LEAF_TTL = dt.timedelta(hours=24)
DEFAULT_CA_TTL = dt.timedelta(days=365)
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between hosts

CA_CERT = "ca.pem"
CA_KEY = "ca.key"


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _dns_name(name: str) -> str:
    """`name` if it is a host name a certificate may carry (RFC 1123 labels, `*.` first at most).

    Raises:
        ValueError: naming the SAN and what is wrong with it.
    """
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if not name.isascii():
        raise ValueError(f"DNS SAN {name!r} is not ASCII: give its IDNA form (xn--...)")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"DNS SAN {name!r} is not a host name: labels of 1-63 letters, digits and inner "
            "hyphens separated by dots, at most 253 characters, a leading '*.' at most"
        )
    return name


def _refuse_to_replace(path: Path, what: str = "it") -> None:
    """Raise FileExistsError for an existing `path`; `filename` lets the CLI say `--force` instead."""
    if path.exists():
        raise FileExistsError(
            errno.EEXIST, f"already exists; pass force=True to replace {what}", str(path)
        )


def _write(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    if not force:
        _refuse_to_replace(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> None:
    """Write key material atomically with mode 0600."""
    _write(Path(path), data, 0o600, force=force)


def write_public(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> None:
    """Write a certificate or bundle atomically with mode 0644."""
    _write(Path(path), data, 0o644, force=force)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate written by `DevCA.issue`.

    `chain` is the PEM certificates in `cert_path`, leaf first.
    """

    identity: str
    cert_path: Path
    key_path: Path
    chain: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime


class DevCA:
    """A self-signed CA for one SPIFFE trust domain, kept as two files in `directory`.

    ```pycon
    >>> ca = DevCA.create("example.org", tmp_dir)           # doctest: +SKIP
    >>> ca.issue("orders").identity                          # doctest: +SKIP
    'spiffe://example.org/orders'
    ```
    """

    def __init__(
        self,
        trust_domain: str,
        directory: Path,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.trust_domain = trust_domain
        self.directory = directory
        self.cert = cert
        self.key = key
        self.clock = clock

    @property
    def cert_path(self) -> Path:
        """The CA certificate: what every service trusts (`MESH_TLS_CA`)."""
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        """The CA's private key; keep it off production hosts."""
        return self.directory / CA_KEY

    @property
    def cert_pem(self) -> str:
        """The CA certificate as PEM text (to build bundles)."""
        return _pem(self.cert).decode("ascii")

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.wall(), dt.timezone.utc)

    @classmethod
    def create(
        cls,
        trust_domain: str,
        directory: str | os.PathLike[str],
        *,
        ttl: dt.timedelta = DEFAULT_CA_TTL,
        force: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        write: bool = True,
    ) -> DevCA:
        """Make a new CA for `trust_domain` and write `ca.pem` and `ca.key` to `directory`.

        Raises:
            ValueError: `trust_domain` is not a valid SPIFFE trust domain.
            FileExistsError: the files exist and `force` is false.
        """
        try:
            SpiffeID.parse(f"spiffe://{trust_domain}/ca")
        except ValueError:
            raise ValueError(
                f"{trust_domain!r} is not a SPIFFE trust domain: use lowercase letters, digits, "
                "'.' and '-', e.g. example.org"
            ) from None
        directory = Path(directory)
        if write and not force:
            for name in (CA_CERT, CA_KEY):
                _refuse_to_replace(directory / name, "the CA")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.fromtimestamp(clock.wall(), dt.timezone.utc)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlib dev CA"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"meshlib dev CA for {trust_domain}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        ca = cls(trust_domain, directory, cert, key, clock=clock)
        if write:
            write_private(ca.key_path, _pem_key(key), force=force)
            write_public(ca.cert_path, _pem(cert), force=force)
        return ca

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, clock: Clock = SYSTEM_CLOCK) -> DevCA:
        """Load the CA that `create` wrote to `directory`.

        Raises:
            CertificateError: the files are missing or unusable (the message names the file).
        """
        directory = Path(directory)
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            reason: object = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise CertificateError(
                f"cannot load the CA certificate {cert_path}: {reason}; run `meshlib ca init` first"
            ) from None
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            why: object = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise CertificateError(f"cannot load the CA key {key_path}: {why}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{key_path}: the dev CA key must be an EC key")
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        trust_domain = next(
            iter(uris.value.get_values_for_type(x509.UniformResourceIdentifier)), ""
        ).removeprefix("spiffe://")
        if not trust_domain:
            raise CertificateError(f"{cert_path}: not a meshlib dev CA (no spiffe:// trust domain)")
        return cls(trust_domain, directory, cert, key, clock=clock)

    def issue(
        self,
        service: str,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        ttl: dt.timedelta = DEFAULT_LEAF_TTL,
        not_before: dt.datetime | None = None,
        identity: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        name: str | None = None,
        force: bool = False,
    ) -> IssuedCert:
        """Issue a leaf for `service` and write `<name>.pem` and `<name>.key`.

        `identity` overrides the SPIFFE ID (default `spiffe://<trust domain>/<service>`);
        `not_before` (default: now, backdated five minutes) and `ttl` set the
        validity window; `name` (default `service`) names the files and
        `directory` (default the CA's) holds them. The leaf is good for both
        server and client authentication.

        Raises:
            ValueError: a bad service name, SPIFFE ID, DNS name or IP address.
            FileExistsError: the files exist and `force` is false.
        """
        spiffe = str(
            SpiffeID.parse(identity)
            if identity
            else SpiffeID.for_service(self.trust_domain, service)
        )
        names = [_dns_name(d) for d in dns]
        addresses = []
        for ip in ips:
            try:
                addresses.append(ipaddress.ip_address(ip))
            except ValueError:
                raise ValueError(f"IP SAN {ip!r} is not an IPv4 or IPv6 address") from None
        out = Path(directory) if directory is not None else self.directory
        name = name or service.replace("/", "-")
        cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
        if not force:
            for path in (cert_path, key_path):
                _refuse_to_replace(path)
        start = not_before if not_before is not None else self._now() - _BACKDATE
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe)]
        sans += [x509.DNSName(d) for d in names]
        sans += [x509.IPAddress(a) for a in addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        leaf = _pem(cert)
        write_private(key_path, _pem_key(key), force=force)
        write_public(cert_path, leaf, force=force)
        return IssuedCert(
            identity=spiffe,
            cert_path=cert_path,
            key_path=key_path,
            chain=(leaf.decode("ascii"),),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
