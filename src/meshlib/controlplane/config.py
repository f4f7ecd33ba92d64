"""ControlPlaneSettings: the control plane server's own settings, from `MESH_CONTROLPLANE_*`.

Tokens belong in the environment (or a secrets manager feeding it), not on
the command line where `ps` shows them; they are `SecretStr` so no repr
or log line prints them:

```python
settings = ControlPlaneSettings(policy="mesh/", publish_tokens=("alice=s3cret",))
# MESH_CONTROLPLANE_POLICY=mesh/ MESH_CONTROLPLANE_PUBLISH_TOKENS=alice=s3cret,bob=0ther
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from meshlib.policy.limits import MAX_POLICY_BYTES

__all__ = ["ControlPlaneSettings"]


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class ControlPlaneSettings(BaseSettings):
    """Server settings; every field reads `MESH_CONTROLPLANE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="MESH_CONTROLPLANE_", extra="ignore", frozen=True)

    policy: Path = Field(
        Path("policy"),
        description="Policy directory (holding policy.yaml and history/) or a single policy file; with an etcd store, a file that seeds an empty store.",
    )
    store: str | None = Field(
        None,
        description="Where replicas keep policy and registrations: unset for the embedded store (the policy directory + this replica's memory), or `etcd://host:2379[,host:2379]` (`etcds://` for TLS).",
    )
    etcd_prefix: str = Field(
        "/meshlib/", description="Key prefix of everything the control plane keeps in etcd."
    )
    etcd_cacert: Path | None = Field(
        None, description="CA bundle that verifies etcd's server certificate (turns TLS on)."
    )
    etcd_cert: Path | None = Field(
        None, description="Client certificate for etcd (client-certificate auth)."
    )
    etcd_key: Path | None = Field(None, description="Private key of the etcd client certificate.")
    etcd_user: str | None = Field(
        None, description="etcd user (`name` or `name:password`, as `etcdctl --user`)."
    )
    etcd_password: SecretStr | None = Field(
        None, description="Password of the etcd user, if not given in `etcd_user`."
    )
    etcd_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds one etcd request may take before the next endpoint is tried.",
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8700, ge=0, le=65535, description="Port to listen on.")
    read_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="Bearer tokens that may read policy and send reports, comma-separated, each `secret` or `name=secret`. None: reading is open.",
    )
    publish_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="Bearer tokens that may publish and roll back (and read). None: publishing is refused.",
    )
    read_identities: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="SPIFFE IDs of mTLS clients that may read."
    )
    publish_identities: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="SPIFFE IDs of mTLS clients that may publish."
    )
    register_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="Bearer tokens that may register instances in the service registry (publish tokens may too).",
    )
    register_identities: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="SPIFFE IDs of mTLS clients that may register their own service's instances without a token (`*`: any).",
    )
    registry_lease: float = Field(
        30.0, gt=0, description="Default instance lease in the registry, seconds."
    )
    registry_max_instances: int = Field(
        10_000, ge=1, description="Most instances the registry holds."
    )
    poll_interval: float = Field(
        0.5,
        gt=0,
        description="Seconds between checks of the policy file and history (hand edits, other replicas).",
    )
    store_resync: float = Field(
        10.0,
        gt=0,
        description="Seconds between linearizable reads of the newest policy version, which bound how long a replica can lag the store if its watch stalls without breaking.",
    )
    max_wait: float = Field(
        60.0, gt=0, description="Longest long-poll a watcher may ask for, in seconds."
    )
    report_ttl: float = Field(
        60.0, gt=0, description="Seconds after which a silent instance is dropped."
    )
    max_instances: int = Field(1000, ge=1, description="Most instances whose reports are kept.")
    max_destinations: int = Field(100, ge=1, description="Most destinations kept per report.")
    max_endpoints: int = Field(32, ge=1, description="Most endpoints kept per destination.")
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send its request line and headers; slower connections are dropped.",
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client has to send a request body (publish, report)."
    )
    shutdown_grace: float = Field(
        3.0,
        ge=0,
        description="On SIGTERM, seconds parked long-polls get before they are answered 304 and closed.",
    )
    max_policy_bytes: int = Field(
        MAX_POLICY_BYTES,
        ge=1024,
        le=MAX_POLICY_BYTES,
        description="Largest policy document accepted; at most the 1 MiB every policy parser accepts.",
    )
    max_report_bytes: int = Field(256 << 10, ge=1024, description="Largest report accepted.")
    tls_cert: Path | None = Field(None, description="Server certificate chain (turns TLS on).")
    tls_key: Path | None = Field(None, description="Server private key.")
    tls_ca: Path | None = Field(
        None, description="CA that client certificates must chain to (turns mTLS on)."
    )

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("etcd://", "etcds://")):
            raise ValueError(
                f"{value!r} is not a store URL: use etcd://host:2379[,host:2379] "
                "(etcds:// for TLS), or leave it unset for the embedded store"
            )
        return value.strip()

    @field_validator(
        "read_tokens",
        "publish_tokens",
        "read_identities",
        "publish_identities",
        "register_tokens",
        "register_identities",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return _split(value)
