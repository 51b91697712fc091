"""Service settings, read from the environment (docs/settings.md).

Locally these come from the shell or from ``local.settings.json`` ``Values`` under
Functions Core Tools; in Azure from the Function App's application settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEVELOPMENT_STORAGE = "UseDevelopmentStorage=true"
DEFAULT_PARTITION = "Microsoft.Default"


@dataclass(frozen=True)
class Connection:
    """How to reach one storage account.

    Either a connection string, or identity-based endpoints as Azure Functions
    spells them (``<Name>__blobServiceUri``, ``__dfsServiceUri``,
    ``__tableServiceUri``, ``__clientId``).
    """

    connection_string: str | None = None
    blob_service_uri: str | None = None
    dfs_service_uri: str | None = None
    table_service_uri: str | None = None
    client_id: str | None = None

    @classmethod
    def from_environment(cls, name: str, env: Mapping[str, str]) -> Connection | None:
        """Read connection ``name`` from ``env``; None when nothing is set."""
        if env.get(name):
            return cls(connection_string=env[name])
        prefix = f"{name}__"
        values = {key[len(prefix) :].lower(): value for key, value in env.items() if key.startswith(prefix)}
        if not values:
            return None
        return cls(
            blob_service_uri=values.get("blobserviceuri"),
            dfs_service_uri=values.get("dfsserviceuri"),
            table_service_uri=values.get("tableserviceuri"),
            client_id=values.get("clientid"),
        )


def spare_cores() -> int:
    """The cores this process may use, less the one its event loop takes."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(usable - 1, 0)


@dataclass(frozen=True)
class Limits:
    """Request limits; exceeding one gives 413 (or 400) naming the limit."""

    max_request_bytes: int = 4 * 1024**3
    max_instance_bytes: int = 2 * 1024**3
    max_parts_per_request: int = 10_000
    # Parts held in memory up to this size; larger parts spill to a temporary file.
    spool_memory_bytes: int = 1024**2
    # Instances of one STOW request processed at the same time.
    store_concurrency: int = 4
    # Worker processes that parse instances (operations/describing.py); 0 parses in threads of the server's process.
    parse_processes: int = field(default_factory=spare_cores)
    # Data elements and sequence items of one instance (bounds parsing memory and time).
    max_elements: int = 500_000
    # Size of a deflated data set once inflated (deflate bombs).
    max_inflated_bytes: int = 256 * 1024**2
    # Length of a URL's query string; App Service front ends refuse much longer ones anyway.
    max_query_bytes: int = 8192
    # Time a request may take, body and storage included (Azure: host.json functionTimeout).
    request_timeout_seconds: int = 1800
    # Most results one QIDO-RS request returns (larger limits are cut, with a Warning header).
    max_search_results: int = 1000
    # Most frames one WADO-RS frames request names.
    max_frames_per_request: int = 1000
    # Pixels of one rendered image or thumbnail (its output width x height).
    max_rendered_pixels: int = 4096 * 4096
    # Request line and header fields of one request, on the local server (in Azure the front ends bound them).
    max_header_bytes: int = 64 * 1024

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Limits:
        defaults = cls()
        return cls(
            max_request_bytes=_int(env, "DICOM_MAX_REQUEST_BYTES", defaults.max_request_bytes),
            max_instance_bytes=_int(env, "DICOM_MAX_INSTANCE_BYTES", defaults.max_instance_bytes),
            max_parts_per_request=_int(env, "DICOM_MAX_PARTS_PER_REQUEST", defaults.max_parts_per_request),
            spool_memory_bytes=defaults.spool_memory_bytes,
            store_concurrency=_int(env, "DICOM_STORE_CONCURRENCY", defaults.store_concurrency),
            parse_processes=_int(env, "DICOM_PARSE_PROCESSES", defaults.parse_processes, minimum=0),
            max_elements=_int(env, "DICOM_MAX_ELEMENTS", defaults.max_elements),
            max_inflated_bytes=_int(env, "DICOM_MAX_INFLATED_BYTES", defaults.max_inflated_bytes),
            max_query_bytes=_int(env, "DICOM_MAX_QUERY_BYTES", defaults.max_query_bytes),
            request_timeout_seconds=_int(env, "DICOM_REQUEST_TIMEOUT_SECONDS", defaults.request_timeout_seconds),
            max_search_results=_int(env, "DICOM_MAX_SEARCH_RESULTS", defaults.max_search_results),
            max_frames_per_request=_int(env, "DICOM_MAX_FRAMES_PER_REQUEST", defaults.max_frames_per_request),
            max_rendered_pixels=_int(env, "DICOM_MAX_RENDERED_PIXELS", defaults.max_rendered_pixels),
            max_header_bytes=_int(env, "DICOM_MAX_HEADER_BYTES", defaults.max_header_bytes),
        )


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"setting {name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Jobs:
    """Long-running operations (docs/operations.md#long-running-operations)."""

    # How long a worker holds an operation without a checkpoint before another may take it over.
    lease_seconds: int = 120
    # Instances one reindex step reads and writes before it checkpoints.
    batch_size: int = 100
    # How often the local server's worker looks for pending operations.
    poll_seconds: int = 2

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Jobs:
        defaults = cls()
        return cls(
            lease_seconds=_int(env, "DICOM_OPERATION_LEASE_SECONDS", defaults.lease_seconds),
            batch_size=_int(env, "DICOM_OPERATION_BATCH_SIZE", defaults.batch_size),
            poll_seconds=_int(env, "DICOM_OPERATION_POLL_SECONDS", defaults.poll_seconds),
        )


AUTH_MODES = ("none", "appservice", "signed")


@dataclass(frozen=True)
class Security:
    """Who may do what (docs/security.md).

    ``auth_mode``: ``none`` (no identity checks: local use, or behind function keys only),
    ``appservice`` (App Service Authentication / Entra ID puts the signed-in principal in
    ``X-MS-CLIENT-PRINCIPAL``; clients cannot forge it because the platform strips it from
    incoming requests), ``signed`` (the same header, trusted only with an HMAC-SHA256
    signature made with ``DICOM_AUTH_TEST_SECRET``: for local tests of the role checks).
    """

    auth_mode: str = "none"
    role_claim: str = "roles"
    reader_role: str = "DicomReader"
    writer_role: str = "DicomWriter"
    owner_role: str = "DicomOwner"
    test_secret: str | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Security:
        mode = (env.get("DICOM_AUTH_MODE") or "none").strip().lower()
        if mode not in AUTH_MODES:
            raise ValueError(f"setting DICOM_AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
        secret = env.get("DICOM_AUTH_TEST_SECRET") or None
        if mode == "signed" and not secret:
            raise ValueError("DICOM_AUTH_MODE=signed needs DICOM_AUTH_TEST_SECRET")
        defaults = cls()
        return cls(
            auth_mode=mode,
            role_claim=env.get("DICOM_ROLE_CLAIM") or defaults.role_claim,
            reader_role=env.get("DICOM_ROLE_READER") or defaults.reader_role,
            writer_role=env.get("DICOM_ROLE_WRITER") or defaults.writer_role,
            owner_role=env.get("DICOM_ROLE_OWNER") or defaults.owner_role,
            test_secret=secret,
        )


@dataclass(frozen=True)
class Settings:
    """Every setting of docs/settings.md, with its local default."""

    lake: Connection = field(default_factory=lambda: Connection(connection_string=DEVELOPMENT_STORAGE))
    index: Connection = field(default_factory=lambda: Connection(connection_string=DEVELOPMENT_STORAGE))
    file_system: str = "dicom"
    workspace: str = "local"
    service: str = "dicom"
    table_prefix: str = "dicom"
    limits: Limits = field(default_factory=Limits)
    security: Security = field(default_factory=Security)
    jobs: Jobs = field(default_factory=Jobs)
    # Browser origins allowed to call the API (CORS), e.g. a viewer's; "*" allows any.
    cors_origins: tuple[str, ...] = ()
    # The analytics Delta tables: how often the local server syncs them from the change feed
    # (Azure: a timer every minute), and how many feed entries one Delta commit applies.
    analytics_interval_seconds: int = 60
    analytics_batch_size: int = 500

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        lake = Connection.from_environment("DicomLake", env) or Connection(connection_string=DEVELOPMENT_STORAGE)
        index = Connection.from_environment("DicomIndex", env) or lake
        return cls(
            lake=lake,
            index=index,
            file_system=env.get("DICOM_FILESYSTEM") or "dicom",
            workspace=env.get("DICOM_WORKSPACE") or "local",
            service=env.get("DICOM_SERVICE") or "dicom",
            table_prefix=env.get("DICOM_TABLE_PREFIX") or "dicom",
            limits=Limits.from_environment(env),
            security=Security.from_environment(env),
            jobs=Jobs.from_environment(env),
            cors_origins=tuple(
                origin.strip().rstrip("/") for origin in (env.get("DICOM_CORS_ORIGINS") or "").split(",") if origin.strip()
            ),
            analytics_interval_seconds=_int(env, "DICOM_ANALYTICS_INTERVAL_SECONDS", cls.analytics_interval_seconds),
            analytics_batch_size=_int(env, "DICOM_ANALYTICS_BATCH_SIZE", cls.analytics_batch_size),
        )
