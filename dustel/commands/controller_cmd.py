"""controller run/reload, call list/kill/transfer."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import click

from .. import logs
from ..config import EngineNode, Settings, node_secret
from ..errors import DustelError
from ..wire import commands as C
from .common import INT, Env, emit, json_option, pass_env, table

controller = click.Group("controller", help="The live controller: engine events -> live state and CDRs.")
call = click.Group("call", help="Live calls: list, kill, transfer.")


def find_node(s: Settings, name: str) -> tuple[str, EngineNode]:
    for engine, nodes in (("freeswitch", s.esl_nodes), ("asterisk", s.ami_nodes)):
        for n in nodes:
            if n.name == name:
                return engine, n
    known = ", ".join(n.name for n in (*s.esl_nodes, *s.ami_nodes)) or "none configured (esl_nodes / ami_nodes)"
    raise DustelError("node", f"unknown node {name!r} (known: {known})")


def _children(env: Env) -> list[tuple[str, list[str], dict[str, str]]]:
    s = env.settings
    base = {**os.environ, "DUSTEL_CONTROLLER_DSN": env.url}
    out = []
    if s.esl_nodes:
        nodes = [[n.name, n.host, n.port, node_secret(s, n, "freeswitch")] for n in s.esl_nodes]
        out.append(("freeswitch", [sys.executable, "-m", "dustel.controller.esl_main"],
                    {**base, "DUSTEL_CONTROLLER_NODES": json.dumps(nodes)}))
    if s.ami_nodes:
        nodes = [[n.name, n.host, n.port, n.username or s.ami_username, node_secret(s, n, "asterisk")]
                 for n in s.ami_nodes]
        out.append(("asterisk", [sys.executable, "-m", "dustel.controller.ami_main"],
                    {**base, "DUSTEL_CONTROLLER_NODES": json.dumps(nodes)}))
    return out


@controller.command("run")
@pass_env
def controller_run(env: Env) -> None:
    """Follow every configured engine node: FreeSWITCH nodes in one gevent
    process, Asterisk nodes in one asyncio process; a process that dies is
    started again (after 1 s, doubling to 30 s).  Stops on SIGTERM/Ctrl-C."""
    logs.service(sys.stderr)
    log = logging.getLogger("dustel.controller")
    specs = _children(env)
    if not specs:
        raise DustelError("esl_nodes / ami_nodes", "no engine node configured (see README, Configuration)")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    delay = {name: 1.0 for name, _, _ in specs}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, argv, child_env in specs:
                p = procs.get(name)
                if p is None or p.poll() is not None:
                    if p is not None:
                        log.warning("%s process exited with %s; restarting in %.0f s", name, p.returncode,
                                    delay[name])
                        time.sleep(delay[name])
                        delay[name] = min(delay[name] * 2, 30)
                    procs[name] = subprocess.Popen(argv, env=child_env)
                    log.info("%s process started (pid %s)", name, procs[name].pid)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(10)


@controller.command("reload")
@pass_env
def controller_reload(env: Env) -> None:
    """Make every engine node load the rendered configuration (everything)."""
    if not (env.settings.esl_nodes or env.settings.ami_nodes):
        raise DustelError("esl_nodes / ami_nodes", "no engine node configured")
    for line in reload_nodes(env, {"freeswitch": None, "asterisk": None}):
        click.echo(line)


def reload_nodes(env: Env, changed: dict[str, list[str] | None],
                 killgw: dict[str, list[str]] | None = None) -> list[str]:
    """Send every node of each engine exactly the reloads for its changed
    files (None: all) — ``killgw``: the FreeSWITCH gateways that changed —
    and each node the commands of its own files.  mod_callcenter forgets
    agents and tiers on a reload (the rendered config truncates them: the
    database owns them), so the logins stored in the database are applied
    again in the same session."""
    s = env.settings
    out = []
    fs_cmds = C.fs_reload(changed["freeswitch"], killgw) if "freeswitch" in changed else []
    own = C.fs_node_reload(s, changed["freeswitch"]) if "freeswitch" in changed else {}
    if any(c.startswith(b"api reload mod_callcenter") for c in fs_cmds):
        from ..callpath.calls import run_sync
        from ..queue import agents, service
        with env.tx() as conn:
            fs_cmds += [cmd for ch in run_sync(conn, agents.current()) for cmd in service.fs_commands(ch)]
    for n in s.esl_nodes:
        if not (fs_cmds or own.get(n.name)):
            continue
        with _engine_errors(n.name):
            replies = C.ESLClient(n.host, n.port, node_secret(s, n, "freeswitch")).run(fs_cmds + own.get(n.name, []))
        out.append(f"{n.name}: " + "; ".join(r.body.decode(errors="replace").strip().replace("\n", " ")
                                             for r in replies))
    ast_actions = C.ast_reload(changed["asterisk"]) if "asterisk" in changed else []
    for n in s.ami_nodes if ast_actions else ():
        with _engine_errors(n.name):
            res = C.ami_run(n.host, n.port, n.username or s.ami_username, node_secret(s, n, "asterisk"),
                            ast_actions)
        out.append(f"{n.name}: " + "; ".join(str(r.get("Response", r)) for r in res))
    return out


@call.command("list")
@click.option("--tenant", type=INT, help="Only this tenant's calls.")
@json_option
@pass_env
def call_list(env: Env, tenant: int | None, as_json: bool) -> None:
    """Calls up now, as the engines reported them."""
    with env.tx() as conn:
        rows = conn.execute("""SELECT node, call_id, tenant_id, direction, account, caller, callee, created_at,
                                      answered_at FROM live_channels
                                WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s ORDER BY created_at""",
                            {"t": tenant}).fetchall()
    emit(rows, as_json, lambda r: table(r, ["node", "call_id", "tenant_id", "direction", "account", "caller",
                                            "callee", "answered_at"]))


def _engine_errors(node: str):  # type: ignore[no-untyped-def]
    """A node that is down or refuses us is an operator's error line, not a traceback."""
    import contextlib

    @contextlib.contextmanager
    def cm():  # type: ignore[no-untyped-def]
        try:
            yield
        except (OSError, TimeoutError) as exc:
            raise DustelError("node", f"{node}: {type(exc).__name__}: {exc}") from None
    return cm()


def _live(env: Env, node: str, call_id: str) -> dict[str, object]:
    with env.tx() as conn:
        row = conn.execute("SELECT * FROM live_channels WHERE node = %s AND call_id = %s", (node, call_id)).fetchone()
    if row is None:
        raise DustelError("call_id", f"no live call {call_id!r} on node {node!r} (dustel call list)")
    return row


@call.command("kill")
@click.argument("node")
@click.argument("call_id")
@pass_env
def call_kill(env: Env, node: str, call_id: str) -> None:
    """Hang up a live call."""
    engine, n = find_node(env.settings, node)
    row = _live(env, node, call_id)
    s = env.settings
    try:
        cmd = C.fs_kill(call_id) if engine == "freeswitch" else C.ast_hangup(str(row["channel"]))
    except ValueError as exc:
        raise DustelError("call_id", str(exc)) from None
    with _engine_errors(node):
        ok, text = _kill(engine, n, s, cmd)
    if not ok:
        raise DustelError("call_id", f"{node} refused: {text}")
    click.echo(f"killed {call_id} on {node}")


def _kill(engine: str, n: EngineNode, s: Settings, cmd: Any) -> tuple[bool, str]:
    if engine == "freeswitch":
        r = C.ESLClient(n.host, n.port, node_secret(s, n, "freeswitch")).run([cmd])[0]
        ok, text = r.ok, r.body.decode(errors="replace").strip()
    else:
        res = C.ami_run(n.host, n.port, n.username or s.ami_username, node_secret(s, n, "asterisk"), [cmd])[0]
        ok, text = res.get("Response") == "Success", str(res.get("Message", ""))
    return ok, text


@call.command("transfer")
@click.argument("node")
@click.argument("call_id")
@click.argument("destination")
@click.option("--context", help="Dialplan context (default: the call's tenant context t<id>).")
@pass_env
def call_transfer(env: Env, node: str, call_id: str, destination: str, context: str | None) -> None:
    """Send a live call to another destination of its tenant."""
    engine, n = find_node(env.settings, node)
    row = _live(env, node, call_id)
    ctx = context or (f"t{row['tenant_id']}" if row["tenant_id"] else None)
    if ctx is None:
        raise DustelError("context", "the call has no tenant; name one with --context")
    s = env.settings
    try:      # each engine's own rule: a uuid for FreeSWITCH, a channel name for Asterisk
        cmd = (C.fs_transfer(call_id, destination, ctx) if engine == "freeswitch"
               else C.ast_redirect(str(row["channel"]), destination, ctx))
    except ValueError as exc:
        raise DustelError(str(exc).split(":", 1)[0], str(exc).split(": ", 1)[-1]) from None
    with _engine_errors(node):
        if engine == "freeswitch":
            r = C.ESLClient(n.host, n.port, node_secret(s, n, "freeswitch")).run([cmd])[0]
            ok, text = r.ok, r.body.decode(errors="replace").strip()
        else:
            res = C.ami_run(n.host, n.port, n.username or s.ami_username, node_secret(s, n, "asterisk"), [cmd])[0]
            ok, text = res.get("Response") == "Success", str(res.get("Message", ""))
    if not ok:
        raise DustelError("call_id", f"{node} refused: {text}")
    click.echo(f"transferred {call_id} on {node} to {destination}@{ctx}")
