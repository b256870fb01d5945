"""``dustel fax``: received faxes, their mails, and the outbox deliverer."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from .. import logs
from ..config import Settings, fs_nodes, node_secret
from ..errors import DustelError, NotFound
from ..fax import outbound, outbox
from .common import INT, Env, emit, json_option, pass_env, table, tenant_filter

fax = click.Group("fax", help="Faxes (F-08): received faxes and the mail outbox.")

_LIST = """SELECT f.id, f.tenant_id, f.created_at, f.direction, f.faxbox, f.remote_number, f.status, f.pages,
                  (SELECT m.state FROM mail_outbox m WHERE m.fax_id = f.id ORDER BY m.id LIMIT 1) AS mail
             FROM faxes f WHERE %(t)s::bigint IS NULL OR f.tenant_id = %(t)s
            ORDER BY f.created_at DESC, f.id DESC"""

_FAILED = """SELECT m.id AS mail, m.tenant_id, m.fax_id, m.kind, m.recipient, m.attempts, m.created_at, m.last_error
               FROM mail_outbox m WHERE m.state = 'failed' AND (%(t)s::bigint IS NULL OR m.tenant_id = %(t)s)
              ORDER BY m.created_at DESC, m.id DESC"""


@fax.command("list")
@tenant_filter
@click.option("--failed", is_flag=True, help="The mails the outbox gave up on instead: fix the address or the "
              "relay, then `fax retry`.")
@json_option
@pass_env
def fax_list(env: Env, as_json: bool, tenant_id: int | None, failed: bool) -> None:
    """Faxes received, newest first, with the state of their mail."""
    with env.tx() as conn:
        rows = conn.execute(_FAILED if failed else _LIST, {"t": tenant_id}).fetchall()
    if failed:
        emit(rows, as_json, lambda d: table(d, ["mail", "tenant_id", "fax_id", "kind", "recipient", "attempts",
                                                "created_at", "last_error"]))
    else:
        emit(rows, as_json, lambda d: table(d, ["id", "tenant_id", "created_at", "faxbox", "remote_number",
                                                "status", "pages", "mail"]))


@fax.command("show")
@click.argument("fax_id", type=INT)
@json_option
@pass_env
def fax_show(env: Env, as_json: bool, fax_id: int) -> None:
    """One fax and every mail about it (attempts, last error)."""
    with env.tx() as conn:
        f = conn.execute("SELECT * FROM faxes WHERE id = %s", (fax_id,)).fetchone()
        if f is None:
            raise NotFound("fax", f"no fax {fax_id}")
        f["mails"] = conn.execute(
            """SELECT id, kind, recipient, state, attempts, next_attempt_at, last_error, sent_at FROM mail_outbox
                WHERE fax_id = %s ORDER BY id""", (fax_id,)).fetchall()
    emit(f, as_json)


@fax.command("retry")
@click.argument("fax_id", type=INT)
@json_option
@pass_env
def fax_retry(env: Env, as_json: bool, fax_id: int) -> None:
    """Queue a fax's failed mail again (after the address was fixed)."""
    with env.tx() as conn:
        rows = conn.execute("""UPDATE mail_outbox SET state = 'queued', attempts = 0, next_attempt_at = now()
                                WHERE fax_id = %s AND state = 'failed' RETURNING id""", (fax_id,)).fetchall()
        if not rows:
            raise DustelError("fax", f"fax {fax_id} has no failed mail to retry")
    emit({"requeued": [r["id"] for r in rows]}, as_json, lambda d: click.echo(f"{len(rows)} mail(s) queued again"))


@fax.command("send")
@click.argument("tenant_id", type=INT)
@click.option("--from", "from_number", required=True, help="One of the tenant's numbers (+E.164).")
@click.option("--to", "to_number", required=True, help="The fax number to send to.")
@click.option("--report-to", default=None, help="Where the delivery report goes; default the tenant's address.")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@pass_env
def fax_send(env: Env, as_json: bool, tenant_id: int, from_number: str, to_number: str, report_to: str | None,
             file: str) -> None:
    """Queue FILE (a PDF) for sending; `fax deliver` places the call."""
    try:
        pdf = Path(file).read_bytes()
    except OSError as exc:
        raise DustelError("file", f"cannot read {file}: {exc.strerror}") from None
    retry = outbound.Retry.of(env.settings)
    with env.tx() as conn:
        row = outbound.queue(conn, tenant_id, from_number, to_number, pdf, report_to, retry=retry)
    emit(row, as_json, lambda d: click.echo(f"fax job {d['id']}: {d['pages']} page(s) to {d['to_number']} queued"))


@fax.command("jobs")
@tenant_filter
@json_option
@pass_env
def fax_jobs(env: Env, as_json: bool, tenant_id: int | None) -> None:
    """Faxes to send, newest first."""
    with env.tx() as conn:
        rows = conn.execute("""SELECT id, tenant_id, created_at, from_number, to_number, pages, state, attempts,
                                      pages_sent, last_result FROM fax_jobs
                                WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s ORDER BY id DESC""",
                            {"t": tenant_id}).fetchall()
    emit(rows, as_json, lambda d: table(d, ["id", "tenant_id", "to_number", "pages", "state", "attempts",
                                            "last_result"]))


def placer_of(s: Settings) -> outbound.CallFiles | outbound.EventSocket:
    """How fax jobs' calls are placed (setting ``fax_engine``)."""
    if s.fax_engine == "asterisk":
        return outbound.CallFiles(s.asterisk_outgoing_dir)
    if s.fax_engine == "freeswitch":
        node = fs_nodes(s)[0]
        return outbound.EventSocket(node.host, node.port, node_secret(s, node, "freeswitch"),
                                    t38=bool(s.fax_send_t38))
    raise DustelError("fax_engine", f"must be asterisk or freeswitch (got {s.fax_engine!r})")


@fax.command("deliver")
@click.option("--loop", is_flag=True, help="Keep delivering (a service); default one pass.")
@click.option("--interval", type=INT, default=10, show_default=True, help="Seconds between passes with --loop.")
@json_option
@pass_env
def fax_deliver(env: Env, as_json: bool, loop: bool, interval: int) -> None:
    """Place the calls of due fax jobs (fax_engine asterisk: call files into
    asterisk_outgoing_dir; freeswitch: an originate over the first of
    esl_nodes) and send the due mails of the outbox (settings smtp_host,
    smtp_port, mail_from)."""
    s = env.settings
    smtp = outbox.Smtp.of(s)
    placer = placer_of(s)
    log = logging.getLogger("dustel.fax")

    def faxes() -> dict[str, object]:
        with env.tx() as conn:
            return {"faxes_started": outbound.start_due(conn, s.fax_read_dir or s.fax_spool_dir, s.fax_spool_dir,
                                                        placer)}

    def mails() -> dict[str, object]:
        with env.tx() as conn:
            return dict(outbox.deliver_due(conn, smtp))

    def one_pass() -> tuple[dict[str, object], list[Exception]]:
        """Both parts, each on its own: a fax that cannot be placed never
        stops the mail, nor the other way round."""
        out: dict[str, object] = {}
        errors: list[Exception] = []
        for part in (faxes, mails):
            try:
                out.update(part())
            except Exception as exc:    # noqa: BLE001 - logged, and the other part still runs
                errors.append(exc)
                if isinstance(exc, DustelError | OSError):
                    log.error("delivery pass: %s failed: %s", part.__name__, exc)
                else:
                    log.exception("delivery pass: %s failed", part.__name__)
        return out, errors

    if not loop:
        result, errors = one_pass()
        emit(result, as_json)
        if errors:
            raise errors[0] if isinstance(errors[0], DustelError) else DustelError("deliver", str(errors[0]))
        return
    logs.service(sys.stdout, logs.LEVELLED)
    while True:
        one_pass()
        time.sleep(interval)


mailgw = click.Group("mailgw", help="The e-mail to fax gateway (F-08).")


@mailgw.command("serve")
@click.option("--host", help="Listen address (default from settings: mailgw_host).")
@click.option("--port", type=INT, help="Listen port (default from settings: mailgw_port).")
@pass_env
def mailgw_serve(env: Env, host: str | None, port: int | None) -> None:
    """Accept mail to <fax number>@<fax_mail_domain> and fax its PDF; logs to stdout."""
    from ..fax import mailgw as gw
    logs.service(sys.stdout, logs.LEVELLED)
    s = env.settings
    tls = gw.tls_context(s.mailgw_tls_cert_file, s.mailgw_tls_key_file)
    try:
        gw.serve(env.url, host or s.mailgw_host, port or s.mailgw_port, s.fax_mail_domain, outbound.Retry.of(s), tls)
    except KeyboardInterrupt:
        pass
