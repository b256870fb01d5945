from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import DustelError
from ..render import edge, service, writer
from .common import INT, Env, emit, json_option, pass_env


@click.command("render")
@click.option("--engine", type=click.Choice(["freeswitch", "asterisk", "kamailio", "all"]), default="all",
              show_default=True, help="all: both engines, and the SIP edge (Kamailio) when edge_nodes are set.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (one sub-directory per engine); default <state-dir>/etc.")
@click.option("--diff", "show_diff", is_flag=True, help="Print a unified diff against --out; write nothing.")
@click.option("--check", is_flag=True, help="Exit 1 when --out differs from the database; write nothing.")
@click.option("--tenant", "tenant_id", type=INT, help="With --diff: only what a render would change for this tenant.")
@click.option("--reload", "do_reload", is_flag=True, help="After writing, ask the engines to reload what changed.")
@json_option
@pass_env
def render(env: Env, as_json: bool, engine: str, out_dir: Path | None, show_diff: bool, check: bool,
           tenant_id: int | None, do_reload: bool) -> None:
    """Render FreeSWITCH, Asterisk and Kamailio configuration from the database.

    Output is deterministic; files are written atomically and only when
    changed; files of deleted tenants are removed.  With edge nodes the
    edge's tables (the engine nodes, the carrier's networks) are written
    too, and --reload makes every edge node read them again (all of them,
    changed or not: a node that missed an earlier reload catches up; every
    node is tried, those that failed are named)."""
    out = out_dir or env.settings.state_dir / "etc"
    s = env.settings
    names = ["freeswitch", "asterisk", *(["kamailio"] if s.edge_nodes else [])] if engine == "all" else [engine]
    if "kamailio" in names and not s.edge_nodes:
        raise DustelError("edge_nodes", "none configured: there is no SIP edge to render (README, Cluster)")
    if tenant_id is not None and not show_diff:
        # one tenant's files are not a configuration: written over a live
        # tree they would delete every other tenant's files
        raise DustelError("tenant", "only with --diff (a partial tree is never written)")
    with env.tx() as conn:
        rendered = service.render_files(conn, env.settings, names)      # always the whole tree
        if "kamailio" in names:          # the edge's rows refused here, before anything is written
            edge.dispatcher_rows(s), edge.address_rows(s)
        domains = {r["sip_domain"]: r["id"] for r in conn.execute("SELECT id, sip_domain FROM tenants")}
        if tenant_id is not None and tenant_id not in domains.values():
            raise DustelError("tenant", f"no tenant with id {tenant_id}")
    if show_diff:
        for name, files in rendered.items():
            if tenant_id is None:
                click.echo(writer.diff(out / name, files), nl=False)
            else:                     # the whole render's diff, only the hunks that touch the tenant
                click.echo(service.tenant_diff(out / name, files, tenant_id, domains), nl=False)
        return
    results = service.apply(rendered, out, write=not check, owner=env.settings.config_owner,
                            group=env.settings.config_group)
    tables: list[str] = []
    if "kamailio" in names:
        with env.tx() as conn:
            tables = edge.plan(conn, s) if check else edge.sync(conn, s)
    data = [{"engine": r.engine, "out": str(r.out), "changed": r.plan.changed, "removed": r.plan.removed,
             "unchanged": len(r.plan.unchanged), "reload": r.reload if not check else [],
             **({"tables": tables} if r.engine == "kamailio" else {})} for r in results]
    emit(data, as_json, _human)
    if check and (tables or any(r.plan.differs for r in results)):
        sys.exit(1)
    if do_reload and not check:
        # exactly the reloads for what changed, to every configured node
        from ..render.engines import node_reload_commands
        from .controller_cmd import reload_nodes
        s = env.settings
        todo = {r.engine: r.plan.changed + r.plan.removed for r in results if r.plan.differs}
        for r in results:
            nodes = s.esl_nodes if r.engine == "freeswitch" else s.ami_nodes
            for cmd in r.reload:
                click.echo(f"reload {r.engine}: {cmd} -> " + (", ".join(n.name for n in nodes) or "no node"))
            if r.engine == "freeswitch":
                for node, cmds in node_reload_commands(s, r.plan.changed).items():
                    for cmd in cmds:
                        click.echo(f"reload {r.engine}: {cmd} -> {node}")
        killgw = next((r.killgw for r in results if r.engine == "freeswitch"), {})
        for line in reload_nodes(env, {e: f for e, f in todo.items() if e != "kamailio"}, killgw):
            click.echo(line)
        if "kamailio" in todo:
            click.echo("kamailio: kamailio.cfg changed: restart each edge node (it reads it at start only)")
        for line in edge.reload(s) if "kamailio" in names else ():
            click.echo(line)


def _human(data: list[dict]) -> None:
    for d in data:
        click.echo(f"{d['engine']}: {len(d['changed'])} changed, {len(d['removed'])} removed, "
                   f"{d['unchanged']} unchanged -> {d['out']}")
        for rel in d["changed"]:
            click.echo(f"  ~ {rel}")
        for rel in d["removed"]:
            click.echo(f"  - {rel}")
        for table in d.get("tables", []):
            click.echo(f"  ~ table kamailio.{table}")
