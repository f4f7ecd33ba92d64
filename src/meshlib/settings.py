"""MeshSettings: the process's own settings, from `MESH_*` environment variables.

Only what belongs to this process lives here (who it is, where its policy
and certificates are, where telemetry goes); how to call other services is
policy, and lives in the policy document. A `.env` file is read only when
asked for, as pydantic-settings spells it, so a stray `.env` in the working
directory never changes a service:

```python
settings = MeshSettings()                       # MESH_* from the environment only
settings = MeshSettings(_env_file=".env")       # and from .env (the environment wins)
settings = MeshSettings(service_name="orders", policy_file="mesh.yaml")
```

Clients use `MESH_CONTROL_PLANE_URL`; the control plane server's own
settings are `MESH_CONTROLPLANE_*`, named after `meshlib controlplane serve`
(`meshlib.controlplane.config.ControlPlaneSettings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["MeshSettings"]


class MeshSettings(BaseSettings):
    """Process settings; every field reads the environment variable `MESH_<FIELD>`.

    Pass `_env_file=".env"` to read a dotenv file too (variables already in
    the environment win), and hand the settings to clients and middleware
    with `settings=`.
    """

    model_config = SettingsConfigDict(
        env_prefix="MESH_",
        env_file=None,  # opt in with MeshSettings(_env_file=".env")
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    service_name: str | None = Field(
        None,
        description="This service's name in the policy: whose `inbound` rules apply, and the caller in telemetry.",
    )
    instance_id: str | None = Field(
        None, description="This process's instance name in reports; defaults to host:pid."
    )
    zone: str | None = Field(None, description="Locality of this instance, for zone-aware routing.")

    policy_file: Path | None = Field(
        None,
        description="Local policy file (YAML, JSON or TOML), watched for changes. Used in dev, or as bootstrap.",
    )
    policy_poll_interval: float = Field(
        0.25, gt=0, description="Seconds between checks of the policy file for changes."
    )

    control_plane_url: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="The control plane's URL, or several comma-separated (`http://cp-1:8700,http://cp-2:8700`), tried in order, failing over. Set, it takes precedence over `MESH_POLICY_FILE` (then only a bootstrap).",
    )
    control_plane_token: SecretStr | None = Field(
        None, description="Bearer token for reading policy and reporting to the control plane."
    )
    control_plane_wait: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a policy or registry long-poll asks the control plane to hold (`?wait=`); keep it below your load balancer's idle timeout.",
    )
    control_plane_read_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds added to the wait for the whole of one fetch (connect, headers, body); a slower answer is a failed fetch.",
    )
    control_plane_backoff_max: float = Field(
        5.0,
        gt=0,
        description="Longest pause between retries after failed control-plane calls (exponential with full jitter from 100 ms).",
    )
    control_plane_max_bytes: int = Field(
        8 << 20,
        ge=64 << 10,
        description="Largest control-plane answer read; a larger one is a failed fetch, never held in memory.",
    )
    cache_dir: Path = Field(
        Path(".meshlib-cache"),
        description="Where the last good policy from the control plane is kept.",
    )
    report_interval: float = Field(
        10.0, ge=1.0, description="Seconds between state reports to the control plane."
    )

    tls_ca: Path | None = Field(None, description="CA bundle that verifies peers.")
    tls_cert: Path | None = Field(None, description="This service's certificate chain.")
    tls_key: Path | None = Field(None, description="This service's private key.")

    telemetry: Literal["none", "console", "otlp"] = Field(
        "none",
        description="Where meshlib sends traces and metrics if the application configured no OpenTelemetry providers itself (needs the otel extra). Unset: OTEL_TRACES_EXPORTER decides.",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP base URL; implies telemetry=otlp. An alias of the standard OTEL_EXPORTER_OTLP_ENDPOINT, which wins when set.",
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of root traces sampled (parent-based). An alias: the standard OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG win when set.",
    )
    metrics_endpoint_attribute: bool = Field(
        False,
        description="Add meshlib.endpoint (one series per pod) to http.client.request.duration and meshlib.client.retries; off: one series per destination.",
    )
    prometheus_port: int | None = Field(
        None, ge=0, le=65535, description="Serve Prometheus metrics on 127.0.0.1 at this port."
    )

    health_path: str = Field("/healthz", description="Liveness path answered by MeshMiddleware.")
    ready_path: str = Field("/readyz", description="Readiness path answered by MeshMiddleware.")

    @field_validator("control_plane_url", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(u.strip() for u in value.split(",") if u.strip())
        return value

    @field_validator("control_plane_url")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return tuple(u.rstrip("/") for u in value)

    @field_validator("health_path", "ready_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"a path starts with '/'; write '/{value}'")
        return value
