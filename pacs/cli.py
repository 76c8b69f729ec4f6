"""The ``pacs`` command (click: it ships with Flask, and gives typed options and help for free)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from pacs import __version__
from pacs.config import Settings, load_settings
from pacs.errors import PacsError

log = logging.getLogger("pacs")


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    try:
        return load_settings(ctx.obj.get("config"), **overrides)
    except PacsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(__version__, prog_name="pacs")
@click.option("--config", "config", type=click.Path(dir_okay=False), envvar="PACS_CONFIG",
              help="TOML settings file (also PACS_CONFIG).")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """mini-PACS: DICOM archive over object storage with a SQL index."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


_data_dir = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                         help="Folder for the SQLite index and filesystem blobs.")


@main.command()
@_data_dir
@click.option("--host", help="Bind address for DICOM and HTTP.")
@click.option("--dicom-port", type=int, help="DICOM port (0 = pick a free one).")
@click.option("--http-port", type=int, help="HTTP port (0 = pick a free one).")
@click.option("--ae-title", help="Our AE title.")
@click.option("--workers", "dicom_workers", type=int, help="DICOM receiver processes (0 = one per core).")
@click.option("--http-workers", "http_workers", type=int, help="HTTP worker processes (0 = one per core).")
@click.option("--samples/--no-samples", "load_samples", default=None,
              help="Load sample_dicom/ into an empty archive at start.")
@click.pass_context
def serve(ctx: click.Context, **opts: Any) -> None:
    """Run the DICOM listener and the HTTP server until SIGTERM."""
    from pacs.serve import serve as run

    sys.exit(run(_settings(ctx, **opts)))


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@_data_dir
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def import_cmd(ctx: click.Context, paths: tuple[str, ...], data_dir: Path | None, quiet: bool) -> None:
    """Store DICOM files and folders (recursive) through the same path as C-STORE."""
    from tqdm import tqdm

    from pacs.services import build_services
    from pacs.tools import import_paths, iter_files

    s = _settings(ctx, data_dir=data_dir)
    logging.basicConfig(level=logging.WARNING)
    services = build_services(s, migrate=True)
    total = sum(1 for _ in iter_files(paths))
    with tqdm(total=total, unit="file", disable=quiet, file=sys.stderr) as bar:
        try:
            report = import_paths(services.ingest, paths, progress=bar.update)
        except PacsError as exc:
            raise click.ClickException(f"stopped: {exc}") from exc
    click.echo(f"stored: {report.stored}  already stored: {report.already}  "
               f"conflicts kept as first: {report.conflicts}  rejected: {len(report.rejected)}")
    for path, reason in report.rejected:
        click.echo(f"  rejected {path}: {reason}")
    services.close()
    sys.exit(1 if report.rejected else 0)


@main.command()
@_data_dir
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--recount", is_flag=True,
              help="Rewrite the series and study counts that disagree with the instance rows.")
@click.pass_context
def verify(ctx: click.Context, data_dir: Path | None, quiet: bool, recount: bool) -> None:
    """Check every indexed blob (present, SHA-256) and the counts kept for C-FIND (instances
    per series; series, instances and modalities per study); list orphan blobs; exit 1 on
    damage (a missing or corrupt blob, or counts left wrong)."""
    from tqdm import tqdm

    from pacs.services import build_services
    from pacs.tools import verify as run_verify

    s = _settings(ctx, data_dir=data_dir)
    services = build_services(s, migrate=True)
    total = services.index.counts().instances
    with tqdm(total=total, unit="blob", disable=quiet, file=sys.stderr) as bar:
        report = run_verify(services.index, services.blobs, progress=bar.update)
    for uid, key in report.missing:
        click.echo(f"MISSING  {key}  (instance {uid})")
    for uid, key in report.corrupt:
        click.echo(f"CORRUPT  {key}  (instance {uid}: SHA-256 differs)")
    for key in report.orphans:
        click.echo(f"ORPHAN   {key}  (no index row; left by an interrupted store)")
    drift = services.index.recount(fix=recount)
    for d in drift:
        click.echo(f"{'RECOUNTED' if recount else 'COUNTS'}  {d.level.lower()} {d.uid}: "
                   f"kept {_counts_text(d.kept)}, the rows say {_counts_text(d.counted)}")
    click.echo(f"checked: {report.checked}  missing: {len(report.missing)}  "
               f"corrupt: {len(report.corrupt)}  orphans: {len(report.orphans)}  "
               f"counts {'rewritten' if recount else 'wrong'}: {len(drift)}")
    if drift and not recount:
        click.echo("the counts are rewritten from the rows by: pacs verify --recount")
    services.close()
    sys.exit(1 if report.damaged or (drift and not recount) else 0)


def _counts_text(values: tuple[object, ...]) -> str:
    """``(instances,)`` or ``(series, instances, modalities)`` of Index.recount, for people."""
    if len(values) == 1:
        return f"{values[0]} instances"
    return f"{values[0]} series, {values[1]} instances, modalities '{values[2]}'"


@main.command()
@_data_dir
@click.option("--yes", is_flag=True, help="Do not ask before clearing the index.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def reindex(ctx: click.Context, data_dir: Path | None, yes: bool, quiet: bool) -> None:
    """Rebuild the index from the blob store alone (stop the server first)."""
    from tqdm import tqdm

    from pacs.services import build_services
    from pacs.tools import reindex as run_reindex

    s = _settings(ctx, data_dir=data_dir)
    if not yes:
        click.confirm("This clears the index and rebuilds it from the blobs. Continue?", abort=True)
    services = build_services(s, migrate=True)
    with tqdm(unit="blob", disable=quiet, file=sys.stderr) as bar:
        report = run_reindex(services.index, services.blobs, progress=bar.update)
    for key, reason in report.unreadable:
        click.echo(f"UNREADABLE {key}: {reason}")
    for key in report.duplicates:
        click.echo(f"DUPLICATE  {key}: its SOP Instance UID is already indexed from another blob")
    click.echo(f"indexed: {report.indexed}  duplicates: {len(report.duplicates)}  "
               f"unreadable: {len(report.unreadable)}")
    services.close()


@main.command()
@_data_dir
@click.pass_context
def migrate(ctx: click.Context, data_dir: Path | None) -> None:
    """Bring the index schema up to date (serve does this at every start)."""
    from pacs.services import build_services

    services = build_services(_settings(ctx, data_dir=data_dir), migrate=True)
    click.echo(f"schema at revision {services.index.schema_revision()}")
    services.close()


@main.group()
def ae() -> None:
    """Known DICOM peers (C-MOVE destinations); changes apply without a restart."""


@contextlib.contextmanager
def _index(ctx: click.Context, data_dir: Path | None) -> Iterator[tuple[Settings, Any]]:
    """The settings and the configured index, its schema brought up to date; errors for click."""
    from pacs.services import open_index

    s = _settings(ctx, data_dir=data_dir)
    index = open_index(s)
    try:
        index.migrate()
        yield s, index
    except PacsError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        index.dispose()


@contextlib.contextmanager
def _registry(ctx: click.Context, data_dir: Path | None) -> Iterator[Any]:
    """The AE registry on the configured index."""
    from pacs.store.aes import AERegistry

    with _index(ctx, data_dir) as (s, index):
        yield AERegistry(index, s.remote_aes)


@ae.command("add")
@click.argument("name")
@click.argument("ae_title", metavar="AET")
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
@_data_dir
@click.option("--no-store", is_flag=True, help="Refuse C-STORE from this AE (as calling AE).")
@click.option("--no-query", is_flag=True, help="Refuse C-FIND from this AE.")
@click.option("--no-retrieve", is_flag=True, help="Refuse C-MOVE / C-GET from this AE.")
@click.pass_context
def ae_add(ctx: click.Context, name: str, ae_title: str, host: str, port: int,
           data_dir: Path | None, no_store: bool, no_query: bool, no_retrieve: bool) -> None:
    """Register peer NAME: AE title AET listening on HOST:PORT."""
    with _registry(ctx, data_dir) as registry:
        peer = registry.add(name, ae_title, host, port, may_store=not no_store,
                            may_query=not no_query, may_retrieve=not no_retrieve)
    click.echo(f"added {peer.name}: {peer.ae_title}@{peer.host}:{peer.port}")


@ae.command("list")
@_data_dir
@click.pass_context
def ae_list(ctx: click.Context, data_dir: Path | None) -> None:
    """List known peers (from the database and the remote_aes setting)."""
    with _registry(ctx, data_dir) as registry:
        peers = registry.peers()
    if not peers:
        click.echo("no remote AEs")
    for p in peers:
        denied = [w for w, ok in (("store", p.may_store), ("query", p.may_query),
                                  ("retrieve", p.may_retrieve)) if not ok]
        extra = f"  denied: {','.join(denied)}" if denied else ""
        click.echo(f"{p.name}\t{p.ae_title}\t{p.host}\t{p.port}\t{p.source}{extra}")


@ae.command("remove")
@click.argument("name")
@_data_dir
@click.pass_context
def ae_remove(ctx: click.Context, name: str, data_dir: Path | None) -> None:
    """Forget peer NAME (exit 1 if it is not registered in the database)."""
    with _registry(ctx, data_dir) as registry:
        gone = registry.remove(name)
        configured = registry.get(name) if not gone else None
    if not gone:
        hint = " (it comes from the remote_aes setting)" if configured else ""
        raise click.ClickException(f"no remote AE named {name!r} in the database{hint}")
    click.echo(f"removed {name}")


@contextlib.contextmanager
def _users(ctx: click.Context, data_dir: Path | None) -> Iterator[Any]:
    """The user accounts on the configured index."""
    from pacs.store.users import Users

    with _index(ctx, data_dir) as (s, index):
        yield Users(index, max_failures=s.login_max_failures, lockout_minutes=s.login_lockout_minutes)


def _read_password() -> str:
    """A new password: prompted twice on a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    return sys.stdin.readline().rstrip("\r\n")


@main.group()
def user() -> None:
    """Web users (admin, radiologist, referrer)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "radiologist", "referrer"]), required=True)
@click.option("--display-name", default="", help="Name shown in the viewer, e.g. 'BS. Trần Thị Bình'.")
@_data_dir
@click.pass_context
def user_add(ctx: click.Context, name: str, role: str, display_name: str, data_dir: Path | None) -> None:
    """Create user NAME; the password is prompted for (or read from standard input)."""
    password = _read_password()
    with _users(ctx, data_dir) as users:
        info = users.add(name, password, role, display_name)
    click.echo(f"added user {info.username} ({info.role})")


@user.command("passwd")
@click.argument("name")
@_data_dir
@click.pass_context
def user_passwd(ctx: click.Context, name: str, data_dir: Path | None) -> None:
    """Set a new password for NAME (also unlocks it and signs out its sessions)."""
    password = _read_password()
    with _users(ctx, data_dir) as users:
        users.set_password(name, password)
    click.echo(f"password of {name} changed")


@user.command("disable")
@click.argument("name")
@_data_dir
@click.pass_context
def user_disable(ctx: click.Context, name: str, data_dir: Path | None) -> None:
    """Stop NAME from signing in; ends its sessions and makes its API tokens useless."""
    _set_disabled(ctx, name, data_dir, True)


@user.command("enable")
@click.argument("name")
@_data_dir
@click.pass_context
def user_enable(ctx: click.Context, name: str, data_dir: Path | None) -> None:
    """Allow a disabled user to sign in again."""
    _set_disabled(ctx, name, data_dir, False)


def _set_disabled(ctx: click.Context, name: str, data_dir: Path | None, disabled: bool) -> None:
    with _users(ctx, data_dir) as users:
        users.set_disabled(name, disabled)
    click.echo(f"{'disabled' if disabled else 'enabled'} {name}")


@user.command("list")
@_data_dir
@click.pass_context
def user_list(ctx: click.Context, data_dir: Path | None) -> None:
    """List users with their role and state."""
    with _users(ctx, data_dir) as users:
        for u in users.list():
            state = "disabled" if u.disabled else "active"
            click.echo(f"{u.username}\t{u.role}\t{state}\t{u.display_name}")


@main.group()
def token() -> None:
    """API tokens for scripts (sent as ``Authorization: Bearer TOKEN``)."""


@token.command("create")
@click.argument("name")
@click.option("--label", default="", help="What the token is for.")
@_data_dir
@click.pass_context
def token_create(ctx: click.Context, name: str, label: str, data_dir: Path | None) -> None:
    """Create a token for user NAME and print it (it is shown only once)."""
    with _users(ctx, data_dir) as users:
        click.echo(users.create_token(name, label))


@token.command("revoke")
@click.argument("name")
@_data_dir
@click.pass_context
def token_revoke(ctx: click.Context, name: str, data_dir: Path | None) -> None:
    """Revoke every token of user NAME."""
    with _users(ctx, data_dir) as users:
        n = users.revoke_tokens(name)
    click.echo(f"revoked {n} token(s) of {name}")


@contextlib.contextmanager
def _shares(ctx: click.Context, data_dir: Path | None) -> Iterator[tuple[Settings, Any, Any]]:
    """Settings, share links and users (for the audit log) on the configured index."""
    from pacs.services import open_shares
    from pacs.store.users import Users

    with _index(ctx, data_dir) as (s, index):
        yield s, open_shares(s, index), Users(index)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "-"


@main.group()
def share() -> None:
    """Shared study links (/s/<token>) for remote consultation, without an account."""


@share.command("create")
@click.argument("study_uid")
@click.option("--days", type=float, help="Days until the link expires (default: share_default_days).")
@click.option("--pin", default="", help="A 4-8 digit PIN the visitor must type.")
@click.option("--deidentify", is_flag=True, help="Show the study de-identified (PS3.15 Basic Profile).")
@click.option("--download", is_flag=True, help="Allow downloading the study as a ZIP with a DICOMDIR.")
@click.option("--notes/--no-notes", default=True, help="Let visitors leave consultation notes.")
@click.option("--series", "series", multiple=True, metavar="UID", help="Share only this series (repeatable).")
@click.option("--label", default="", help="What the link is for, e.g. 'Hội chẩn BV Bạch Mai'.")
@click.option("--creator", default="cli", help="User name recorded as the link's creator.")
@click.option("--qr/--no-qr", default=None, help="Print a QR code of the URL (default: on a terminal).")
@_data_dir
@click.pass_context
def share_create(ctx: click.Context, study_uid: str, days: float | None, pin: str, deidentify: bool,
                 download: bool, notes: bool, series: tuple[str, ...], label: str, creator: str,
                 qr: bool | None, data_dir: Path | None) -> None:
    """Create a link to STUDY_UID and print its URL (the token is shown only this once)."""
    with _shares(ctx, data_dir) as (s, shares, users):
        token, link = shares.create(
            study_uid, created_by=creator, days=days, pin=pin, deidentify=deidentify,
            allow_download=download, allow_notes=notes, series_uids=series, label=label)
        users.audit("share-create", username=creator, study=study_uid, address="cli",
                    detail=f"share {link.id}")
    url = f"{s.public_url.rstrip('/')}/s/{token}"
    click.echo(url)
    click.echo(f"link {link.id}, expires {_when(link.expires_at)}"
               + ("" if s.public_url else " (set public_url to print a full address)"), err=True)
    if qr if qr is not None else sys.stdout.isatty():
        import segno

        segno.make(url, error="m").terminal(compact=True)


@share.command("list")
@click.argument("study_uid", required=False)
@click.option("--all", "show_all", is_flag=True, help="Also expired and revoked links.")
@_data_dir
@click.pass_context
def share_list(ctx: click.Context, study_uid: str | None, show_all: bool, data_dir: Path | None) -> None:
    """List the active links (of STUDY_UID, or of every study)."""
    with _shares(ctx, data_dir) as (_s, shares, _users):
        links = shares.for_study(study_uid) if study_uid else shares.active()
        now = shares.clock()
    shown = [x for x in links if show_all or x.state(now) == "active"]
    if not shown:
        click.echo("no links")
    for x in shown:
        flags = ",".join(f for f, on in (("pin", x.has_pin), ("deidentified", x.deidentify),
                                          ("download", x.allow_download), ("notes", x.allow_notes),
                                          (f"{len(x.series_uids)}-series", bool(x.series_uids))) if on)
        click.echo(f"{x.id}\t{x.state(now)}\t{x.study_instance_uid}\texpires {_when(x.expires_at)}\t"
                   f"views {x.views}\tlast {_when(x.last_access_at)}\t{x.created_by}\t{flags or '-'}\t{x.label}")


@share.command("revoke")
@click.argument("share_id", metavar="ID", type=int)
@_data_dir
@click.pass_context
def share_revoke(ctx: click.Context, share_id: int, data_dir: Path | None) -> None:
    """Revoke link ID at once (every node refuses it at its next request)."""
    with _shares(ctx, data_dir) as (_s, shares, users):
        link = shares.get(share_id)
        if link is None:
            raise click.ClickException(f"no link {share_id}")
        shares.revoke(share_id)
        users.audit("share-revoke", username="cli", study=link.study_instance_uid, address="cli",
                    detail=f"share {share_id}")
    click.echo(f"revoked link {share_id}")


@main.command()
@click.pass_context
def settings(ctx: click.Context) -> None:
    """Print the effective settings (secrets hidden)."""
    s = _settings(ctx)
    for name, value in vars(s).items():
        if name == "extra":
            continue
        if "secret" in name and value:
            value = "***"
        elif name == "database_url" and value:
            value = _hide_password(value)
        click.echo(f"{name} = {value}")


def _hide_password(url: str) -> str:
    """``url`` with its password shown as ``***`` (all of it when it does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "***"


if __name__ == "__main__":
    main()
