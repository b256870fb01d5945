"""One engine-neutral queue service: a ``Change`` (agents.py) becomes the
exact commands each engine needs.

FreeSWITCH mod_callcenter (agents and tiers are rendered into
callcenter.conf, agents "Logged Out"): a login adds the tier and sets the
agent Available; pause is the agent status 'On Break'; a logout removes the
tier and, with the agent's last queue, sets 'Logged Out'.  mod_callcenter
keeps one status per agent, so a pause covers all the agent's queues —
which is what *53 means anyway.

Asterisk app_queue (members are dynamic, never rendered): a login adds the
member (penalty = level - 1, member name agent-<id>), pause/unpause and
logout act per queue.  The same change is sent as dialplan applications
from inside a star-code call (FastAGI EXEC) or as AMI actions (re-apply
after a restart)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire import commands as C
from ..wire import esl as P
from .agents import Change

if TYPE_CHECKING:
    from ..config import Settings


def fs_agent(c: Change) -> str:
    return P.token(f"agent-{c.agent_id}@{c.domain}", "agent")


def fs_commands(c: Change) -> list[bytes]:
    agent, queue = fs_agent(c), P.token(f"{c.queue}@{c.domain}", "queue")
    if c.op == "login":
        return [P.api("callcenter_config", "tier", "add", queue, agent, str(int(c.level)), str(int(c.position))),
                P.api("callcenter_config", "agent", "set", "status", agent, "Available")]
    if c.op == "logout":
        out = [P.api("callcenter_config", "tier", "del", queue, agent)]
        if c.last:
            out.append(P.api("callcenter_config", "agent", "set", "status", agent, "'Logged Out'"))
        return out
    if c.op == "pause":
        return [P.api("callcenter_config", "agent", "set", "status", agent, "'On Break'")]
    if c.op == "unpause":
        return [P.api("callcenter_config", "agent", "set", "status", agent, "Available")]
    raise ValueError(f"op: unknown queue change {c.op!r}")


def ast_interface(c: Change) -> str:
    if c.contact_user:
        return "PJSIP/" + P.token(c.contact_user, "contact")
    if c.contact_e164:
        # <tenant>-<number>: dustel-agent-out asks the policy for an outbound leg of this tenant
        return f"Local/{int(c.tenant_id)}-{P.token(c.contact_e164, 'contact')}@dustel-agent-out"
    raise ValueError("contact: the agent has no phone and no number")


def ast_apps(c: Change) -> list[tuple[str, str]]:
    """Dialplan applications (for AGI EXEC) — every argument a token."""
    q, iface = P.token(c.queue, "queue"), ast_interface(c)
    if c.op == "login":
        return [("AddQueueMember", f"{q},{iface},{int(c.level) - 1},,agent-{int(c.agent_id)}")]
    if c.op == "logout":
        return [("RemoveQueueMember", f"{q},{iface}")]
    if c.op == "pause":
        return [("PauseQueueMember", f"{q},{iface}")]
    if c.op == "unpause":
        return [("UnpauseQueueMember", f"{q},{iface}")]
    raise ValueError(f"op: unknown queue change {c.op!r}")


def ast_actions(c: Change) -> list[dict[str, str]]:
    q, iface = P.token(c.queue, "queue"), ast_interface(c)
    if c.op == "login":
        return [C.ami("QueueAdd", Queue=q, Interface=iface, Penalty=int(c.level) - 1,
                      MemberName=f"agent-{int(c.agent_id)}")]
    if c.op == "logout":
        return [C.ami("QueueRemove", Queue=q, Interface=iface)]
    if c.op in ("pause", "unpause"):
        return [C.ami("QueuePause", Queue=q, Interface=iface, Paused="true" if c.op == "pause" else "false")]
    raise ValueError(f"op: unknown queue change {c.op!r}")


def push(settings: Settings, changes: list[Change]) -> list[str]:
    """Send changes made outside a call (the Kundencenter's agent page) to
    every configured node: FreeSWITCH over a one-shot Event Socket, Asterisk
    as AMI actions.  The database already holds them (and the controller
    applies them again after an engine restart), so a node that cannot be
    reached is reported, not fatal: the problems, one line per node."""
    from ..config import node_secret
    problems: list[str] = []
    fs = [cmd for c in changes for cmd in fs_commands(c)]
    for n in settings.esl_nodes if fs else ():
        try:
            replies = C.ESLClient(n.host, n.port, node_secret(settings, n, "freeswitch")).run(fs)
            problems += [f"{n.name}: {r.body.decode(errors='replace').strip()}" for r in replies if not r.ok]
        except (OSError, PermissionError, ConnectionError) as exc:
            problems.append(f"{n.name}: {type(exc).__name__}: {exc}")
    ast = [a for c in changes for a in ast_actions(c)]
    for n in settings.ami_nodes if ast else ():
        try:
            C.ami_run(n.host, n.port, n.username or settings.ami_username, node_secret(settings, n, "asterisk"), ast)
        except (OSError, ConnectionError) as exc:
            problems.append(f"{n.name}: {type(exc).__name__}: {exc}")
    return problems
