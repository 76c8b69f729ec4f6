"""``pacs user add | disable | enable | list`` on a real index (SQLite), through click's runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacs.cli import main
from pacs.config import load_settings
from pacs.services import build_services
from pacs.store.users import AuthFailed, Users


def run(data: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data)], input=stdin, catch_exceptions=False)
    return result.exit_code, result.output


def test_disable_and_enable_change_who_may_sign_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PACS_"):
            monkeypatch.delenv(key)
    data = tmp_path / "data"
    build_services(load_settings(env={}, data_dir=data, fsync=False), migrate=True).close()
    code, out = run(data, "user", "add", "binh", "--role", "referrer", stdin="a long password 1\n")
    assert code == 0, out

    def can_sign_in() -> bool:
        services = build_services(load_settings(env={}, data_dir=data))
        try:
            Users(services.index).authenticate("binh", "a long password 1")
            return True
        except AuthFailed:
            return False
        finally:
            services.close()

    assert can_sign_in()
    code, out = run(data, "user", "disable", "binh")
    assert code == 0 and "disabled binh" in out
    assert not can_sign_in()
    code, out = run(data, "user", "list")
    assert "binh\treferrer\tdisabled" in out
    code, out = run(data, "user", "enable", "binh")
    assert code == 0 and "enabled binh" in out
    assert can_sign_in()
