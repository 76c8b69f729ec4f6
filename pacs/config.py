"""Settings: one frozen, typed object.

Precedence, lowest first: built-in defaults < TOML config file (``--config`` or
``PACS_CONFIG``) < ``PACS_<NAME>`` environment variables < command-line arguments.
Every field is documented in the README's configuration table.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from pacs.errors import ConfigError

BlobBackend = Literal["filesystem", "minio"]
DuplicatePolicy = Literal["keep-first", "overwrite", "reject"]


@dataclass(frozen=True)
class Settings:
    """Everything an operator can set. Field names are the TOML keys; env is ``PACS_`` + upper."""

    # DICOM listener (PS3.8: AE title up to 16 characters).
    ae_title: str = "MINIPACS"
    host: str = "0.0.0.0"
    dicom_port: int = 11112
    http_port: int = 8080
    #: Receiving processes sharing the DICOM listening socket; 0 = one per CPU core.
    dicom_workers: int = 0
    #: Largest P-DATA PDU we accept; 0 = unlimited (PS3.8 D.3.3.2.1), fewer PDUs per instance.
    max_pdu_size: int = 0
    #: Seconds a silent association may stay open (ARTIM / DIMSE / network timeouts).
    network_timeout: float = 60.0
    #: Concurrent associations per receiving process.
    max_associations: int = 32

    # Storage.
    data_dir: Path = Path("data")
    #: SQLAlchemy URL; empty = SQLite file ``<data_dir>/index.sqlite``.
    database_url: str = ""
    blob_backend: BlobBackend = "filesystem"
    #: Filesystem blob folder; empty = ``<data_dir>/blobs``.
    blob_dir: str = ""
    #: fsync every blob and index commit before acknowledging (turn off only for throwaway data).
    fsync: bool = True
    minio_endpoint: str = "127.0.0.1:9000"
    minio_access_key: str = ""
    minio_secret_key: str = ""
    minio_bucket: str = "pacs"
    minio_region: str = "us-east-1"
    minio_secure: bool = False
    #: What to do when a SOP Instance UID arrives again with different bytes.
    duplicate_policy: DuplicatePolicy = "keep-first"
    #: Largest instance accepted, in MiB (0 = no limit); larger ones are refused (0xA700 / 413).
    max_instance_mb: int = 2048
    #: Largest STOW-RS request body, in MiB (0 = no limit); larger ones get HTTP 413 unread.
    stow_max_mb: int = 4096

    # Query/Retrieve.
    #: Most C-FIND answers per query (0 = no limit); past it the first N are answered and it is logged.
    find_limit: int = 1000

    # Query/Retrieve.
    #: Known peers besides ``pacs ae add``: ``NAME=AET@HOST:PORT`` entries, comma-separated.
    remote_aes: str = ""

    # Web.
    #: HTTP worker processes sharing the HTTP listening socket; 0 = one per CPU core.
    http_workers: int = 0
    #: Request threads per HTTP worker process.
    http_threads: int = 8
    #: Decoded images kept in memory per HTTP worker, in MiB (least recently used evicted first).
    render_cache_mb: int = 256
    #: Address users reach the server at (e.g. ``https://pacs.example.vn``); ``https`` marks cookies Secure.
    public_url: str = ""
    #: Hours a browser session stays signed in.
    session_hours: float = 12.0
    #: Failed sign-ins in a row before an account is locked, and for how many minutes.
    login_max_failures: int = 5
    login_lockout_minutes: float = 15.0
    #: Days a shared study link (``/s/<token>``) lasts when its creator gives none, and the most allowed.
    share_default_days: float = 7.0
    share_max_days: float = 30.0

    # Start-up.
    #: Import ``sample_dicom/`` into an empty archive at the first start.
    load_samples: bool = True
    samples_dir: str = ""
    log_level: str = "INFO"

    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'index.sqlite').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        return Path(self.blob_dir) if self.blob_dir else Path(self.data_dir).resolve() / "blobs"

    @property
    def resolved_samples_dir(self) -> Path:
        if self.samples_dir:
            return Path(self.samples_dir)
        return Path(__file__).resolve().parent.parent / "sample_dicom"

    @property
    def resolved_http_workers(self) -> int:
        return self.http_workers if self.http_workers > 0 else max(1, os.cpu_count() or 1)

    @property
    def resolved_dicom_workers(self) -> int:
        return self.dicom_workers if self.dicom_workers > 0 else max(1, os.cpu_count() or 1)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (``None`` values are ignored), validated."""
        clean = {k: v for k, v in changes.items() if v is not None}
        return _validated(dataclasses.replace(self, **_coerce_all(clean)))


def _field_types() -> dict[str, Any]:
    hints = get_type_hints(Settings)
    return {f.name: hints[f.name] for f in fields(Settings) if f.name != "extra"}


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Turn a TOML / env / CLI value into the field's type, or raise ConfigError."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(value)
        choices = get_args(kind)
        if choices:
            text = str(value)
            if text not in choices:
                raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
            return text
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: bad value {value!r} ({exc})") from exc


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    types = _field_types()
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in types:
            raise ConfigError(f"unknown setting {key!r}")
        out[name] = _coerce(name, types[name], value)
    return out


def _validated(settings: Settings) -> Settings:
    title = settings.ae_title
    if not title.strip() or len(title) > 16 or "\\" in title or not title.isascii():
        raise ConfigError("ae_title must be 1-16 ASCII characters without backslash (PS3.5 AE VR)")
    for name in ("dicom_port", "http_port"):
        port = getattr(settings, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name} must be 0-65535, not {port}")
    if settings.max_pdu_size < 0:
        raise ConfigError("max_pdu_size must be 0 (unlimited) or positive")
    if settings.http_threads < 1 or settings.render_cache_mb < 0 or settings.login_max_failures < 1:
        raise ConfigError("http_threads and login_max_failures must be at least 1, render_cache_mb >= 0")
    if settings.public_url and not settings.public_url.startswith(("http://", "https://")):
        raise ConfigError("public_url must start with http:// or https://")
    if settings.stow_max_mb < 0:
        raise ConfigError("stow_max_mb must be 0 (no limit) or positive")
    if not 0 < settings.share_default_days <= settings.share_max_days:
        raise ConfigError("share_default_days must be more than 0 and at most share_max_days")
    if settings.find_limit < 0:
        raise ConfigError("find_limit must be 0 (no limit) or positive")
    if settings.remote_aes.strip():
        from pacs.store.aes import parse_remote_aes

        parse_remote_aes(settings.remote_aes)  # ConfigError on a bad entry
    if settings.blob_backend == "minio" and not settings.minio_endpoint:
        raise ConfigError("blob_backend=minio needs minio_endpoint")
    return settings


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults < TOML file < ``PACS_*`` env < ``overrides`` (non-None)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get("PACS_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        # Allow either top-level keys or a [pacs] table.
        values.update(_coerce_all(data.get("pacs", data)))
    types = _field_types()
    for name in types:
        key = "PACS_" + name.upper()
        if key in env:
            values[name] = _coerce(name, types[name], env[key])
    values.update(_coerce_all({k: v for k, v in overrides.items() if v is not None}))
    return _validated(Settings(**values))
