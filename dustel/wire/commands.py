"""Commands to the engines, for the CLI and for other parts (render
--reload, the queue service): built purely (every value from data is a
``protocol.token`` or refused), sent by two small one-shot clients — a
blocking Event Socket client (no gevent needed for one command) and
panoramisk for AMI.

Features that live in the database (forwarding, groups, limits, lists)
need no command at all: the call-time policy reads them for every call.
Queue membership goes to the engines through ``dustel.queue`` (issue 6)."""
from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import esl as P

FS_CAUSES = frozenset({"NORMAL_CLEARING", "CALL_REJECTED", "USER_BUSY", "NO_ANSWER", "ALLOTTED_TIMEOUT",
                       "MANAGER_REQUEST", "NORMAL_TEMPORARY_FAILURE", "RECOVERY_ON_TIMER_EXPIRE"})


# ------------------------------------------------------------------ FreeSWITCH

def fs_kill(uuid: str, cause: str = "MANAGER_REQUEST") -> bytes:
    if cause not in FS_CAUSES:
        raise ValueError(f"cause: must be one of {', '.join(sorted(FS_CAUSES))}")
    return P.api("uuid_kill", P.token(uuid, "call id"), cause)


def fs_transfer(uuid: str, destination: str, context: str) -> bytes:
    return P.api("uuid_transfer", P.token(uuid, "call id"), P.token(destination, "destination"), "XML",
                 P.token(context, "context"))


def fs_drop_registration(profile: str, call_id: str, user: str, realm: str) -> bytes:
    """Drop one binding (``sofia profile P flush_inbound_reg <call-id>``).
    The Call-ID comes from the phone: when it is not a plain token it cannot
    name the binding safely, and every binding of the user goes instead."""
    try:
        which = P.token(call_id, "call-id")
    except ValueError:
        which = P.token(f"{user}@{realm}", "user")
    return P.api("sofia", "profile", P.token(profile, "profile"), "flush_inbound_reg", which)


# every rendered file that needs a reload of its own (a full reload)
FS_ALL = ["autoload_configs/acl.conf.xml", "sip_profiles/internal.xml", "sip_profiles/carrier.xml",
          "autoload_configs/callcenter.conf.xml", "autoload_configs/local_stream.conf.xml",
          "autoload_configs/xml_curl.conf.xml"]
AST_ALL = ["pjsip.conf", "extensions.conf", "queues.conf", "musiconhold.conf", "manager.conf"]


def fs_reload(changed: list[str] | None = None, killgw: Mapping[str, Iterable[str]] | None = None) -> list[bytes]:
    """The api commands for what changed (everything when None): ``reloadacl``,
    ``reloadxml``, a ``rescan`` of each changed profile — after a ``killgw`` of
    each of its gateways in ``killgw`` (profile -> names), or of every gateway
    on a full reload, which cannot know what the engine holds — the
    call-centre and hold-music modules: the one list
    ``render.engines.reload_commands``."""
    from ..render.engines import FS_GATEWAYS, reload_commands
    if changed is None:
        changed, killgw = FS_ALL, FS_GATEWAYS
    return [P.api(*cmd.split()) for cmd in reload_commands("freeswitch", changed, killgw)]


def fs_node_reload(settings: Any, changed: list[str] | None = None) -> dict[str, list[bytes]]:
    """Node name -> the api commands for its own changed files (all when None):
    its session caps (``fsctl``)."""
    from ..config import fs_nodes
    from ..render.engines import node_dir, node_reload_commands
    if changed is None:
        changed = [f"{node_dir(n)}/switch.conf.xml" for n in fs_nodes(settings)]
    return {node: [P.api(*cmd.split()) for cmd in cmds]
            for node, cmds in node_reload_commands(settings, changed).items()}


@dataclass
class ESLClient:
    """A blocking, one-shot inbound Event Socket client."""
    host: str
    port: int
    password: str
    timeout: float = 10.0

    def run(self, commands: Iterable[bytes]) -> list[P.Frame]:
        replies: list[P.Frame] = []
        reader = P.FrameReader()
        pending: list[P.Frame] = []

        def next_frame(sock: socket.socket) -> P.Frame:
            while not pending:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("FreeSWITCH closed the event socket")
                pending.extend(f for f in reader.feed(data) if f.content_type in ("auth/request", "command/reply",
                                                                                  "api/response",
                                                                                  "text/disconnect-notice"))
            return pending.pop(0)

        with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            if next_frame(sock).content_type != "auth/request":
                raise ConnectionError("no auth/request greeting")
            sock.sendall(P.command("auth " + P.header_value(self.password, "password")))
            if not next_frame(sock).ok:
                raise PermissionError("event socket password refused")
            for cmd in commands:
                sock.sendall(cmd)
                replies.append(next_frame(sock))
            sock.sendall(P.command("exit"))
        return replies


# -------------------------------------------------------------------- Asterisk

_CONTACT_ID = re.compile(r"[A-Za-z0-9_.@+\-]{1,80};@[0-9a-f]{32}")


def ast_drop_contact(contact_id: str) -> dict[str, str]:
    """Drop one registered contact (id ``<aor>;@<md5 of the URI>``).
    Asterisk has no action for it; res_pjsip keeps dynamic contacts in its
    astdb family ``registrar/contact`` (sorcery.conf default) and reads them
    from there for every dial, so deleting the key deletes the contact."""
    if not _CONTACT_ID.fullmatch(contact_id):
        raise ValueError(f"contact: not a PJSIP contact id ({contact_id[:40]!r})")
    return ami("DBDel", Family="registrar/contact", Key=contact_id)

def ami(action: str, **fields: object) -> dict[str, str]:
    """An AMI action: ``Key: value`` lines, so no value may carry a line break
    (it would add a header, or a second action after a blank line)."""
    out = {"Action": P.token(action, "action")}
    for key, value in fields.items():
        v = str(value)
        if any(c in v for c in "\r\n\x00"):
            raise ValueError(f"{key}: must not contain a line break")
        out[P.token(key, "field")] = v
    return out


# An Asterisk channel name (``PJSIP/000387100001-0000002a``,
# ``Local/+49211@dustel-agent-out-00000003;1``): AMI takes it as a header
# value, so only line breaks could inject — and no channel has spaces.
_AST_CHANNEL = re.compile(r"[A-Za-z0-9_.@+:/=;#*~-]{1,200}")


def ast_channel(channel: str) -> str:
    if not _AST_CHANNEL.fullmatch(channel):
        raise ValueError(f"channel: not an Asterisk channel name (got {channel[:40]!r})")
    return channel


def ast_hangup(channel: str, cause: int = 16) -> dict[str, str]:
    return ami("Hangup", Channel=ast_channel(channel), Cause=int(cause))


def ast_redirect(channel: str, destination: str, context: str) -> dict[str, str]:
    return ami("Redirect", Channel=ast_channel(channel), Exten=P.token(destination, "destination"),
               Context=P.token(context, "context"), Priority=1)


def ast_reload(changed: list[str] | None = None) -> list[dict[str, str]]:
    """``Reload`` of each changed file's module (the AMI user has no
    ``command`` right: no CLI commands)."""
    from ..render.engines import reload_commands
    return [ami("Reload", Module=m)
            for m in reload_commands("asterisk", AST_ALL if changed is None else changed)]


async def _ami_run(host: str, port: int, username: str, secret: str, actions: list[dict[str, str]]) -> list[Any]:
    from panoramisk import Manager
    m = Manager(host=host, port=port, username=username, secret=secret, events="off", ping_delay=3600)
    await asyncio.wait_for(m.connect(), 10)
    try:
        for _ in range(100):
            if m.authenticated:
                break
            await asyncio.sleep(0.05)
        if not m.authenticated:
            raise PermissionError("AMI login refused")
        return [await asyncio.wait_for(m.send_action(a), 10) for a in actions]
    finally:
        m.close()


def ami_run(host: str, port: int, username: str, secret: str, actions: list[dict[str, str]]) -> list[Any]:
    return asyncio.run(_ami_run(host, port, username, secret, actions))
