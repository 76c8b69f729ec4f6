"""Settings precedence: defaults < TOML file < PACS_* env < arguments."""

from pathlib import Path

import pytest

from pacs.config import Settings, load_settings
from pacs.errors import ConfigError


def test_defaults_embedded() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.blob_backend == "filesystem"
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.resolved_blob_dir == Path("data").resolve() / "blobs"


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "pacs.toml"
    cfg.write_text('ae_title = "FILEAE"\ndicom_port = 2000\nhttp_port = 2001\nfsync = false\n')
    env = {"PACS_CONFIG": str(cfg), "PACS_DICOM_PORT": "3000", "PACS_FSYNC": "true"}
    s = load_settings(env=env, http_port=None, ae_title="ARGAE")
    assert s.ae_title == "ARGAE"  # argument beats file
    assert s.dicom_port == 3000  # env beats file
    assert s.http_port == 2001  # file beats default
    assert s.fsync is True


def test_pacs_table_and_minio(tmp_path: Path) -> None:
    cfg = tmp_path / "pacs.toml"
    cfg.write_text('[pacs]\nblob_backend = "minio"\nminio_endpoint = "s3.local:9000"\nminio_secure = true\n')
    s = load_settings(cfg, env={})
    assert (s.blob_backend, s.minio_endpoint, s.minio_secure) == ("minio", "s3.local:9000", True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PACS_DICOM_PORT": "abc"}, "dicom_port"),
        ({"PACS_DICOM_PORT": "70000"}, "dicom_port"),
        ({"PACS_BLOB_BACKEND": "ftp"}, "blob_backend"),
        ({"PACS_DUPLICATE_POLICY": "whatever"}, "duplicate_policy"),
        ({"PACS_AE_TITLE": "A" * 17}, "ae_title"),
        ({"PACS_FSYNC": "maybe"}, "fsync"),
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "pacs.toml"
    cfg.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_settings(cfg, env={})


def test_every_setting_documented_in_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in Settings.__dataclass_fields__:
        if name == "extra":
            continue
        assert f"PACS_{name.upper()}" in readme, f"PACS_{name.upper()} missing from README"
