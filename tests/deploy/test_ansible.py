"""Issue 12: the Ansible roles, linted, and applied for real to a fresh
Debian bookworm tree (mmdebstrap, the ``community.general.chroot``
connection) with no init system: the ``postgresql`` and ``dustel`` roles
install PostgreSQL and dustel, set up the role and database, migrate and
render; a second run changes nothing; the units pass ``systemd-analyze
verify``; the installed ``dustel`` works inside the tree against the
PostgreSQL the role set up.

The tree needs root (mmdebstrap, chroot, bind mounts) and the host's Debian
mirror; without them this test skips with the reason, which pytest's -ra
summary prints.  The ``asterisk`` role is not applied: bookworm has no
Asterisk package (the engine tests run Asterisk 22 from sid)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
PG_PORT = 55432
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]


def tool_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1"}


def test_the_playbook_passes_ansible_lint_production_and_the_syntax_check() -> None:
    lint = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
                          cwd=ANSIBLE, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in lint.stderr + lint.stdout
    syntax = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory.example.yml",
                             "site.yml"], cwd=ANSIBLE, env=tool_env(), capture_output=True, text=True, timeout=120)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr


def test_a_bare_client_address_becomes_one_host_in_pg_hba_ipv4_and_ipv6() -> None:
    """Issue 26 item 18: a bare IPv6 client address became /32 in pg_hba — a
    whole provider's block allowed to the database."""
    clients = ["10.0.0.7", "2001:db8::7", "10.1.0.0/16", "2001:db8::/48", "::ffff:10.0.0.8"]
    r = subprocess.run([str(BIN / "ansible"), "localhost", "-c", "local", "-m", "ansible.builtin.debug",
                        "-a", "var=postgresql_client_addresses", "-e", "@roles/postgresql/defaults/main.yml",
                        "-e", json.dumps({"postgresql_clients": clients})],
                       cwd=ANSIBLE, env={**tool_env(), "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                                         "ANSIBLE_STDOUT_CALLBACK": "json"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (play,) = json.loads(r.stdout)["plays"]
    value = play["tasks"][0]["hosts"]["localhost"]["postgresql_client_addresses"]
    assert value == ["10.0.0.7/32", "2001:db8::7/128", "10.1.0.0/16", "2001:db8::/48", "::ffff:10.0.0.8/128"]


def test_the_standby_role_never_wipes_a_server_holding_a_database(tmp_path: Path) -> None:
    """The standby role empties the data directory before pg_basebackup.  Run
    again after a failover (the promoted standby has no standby.signal) it
    deleted the live database; now it wipes only the package's empty
    cluster (template0, template1, postgres) and refuses anything more
    unless asked to re-clone."""
    play = tmp_path / "guard.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                    f"    - ansible.builtin.import_tasks: {ANSIBLE}/roles/postgresql_standby/tasks/guard.yml\n")

    def run(base: list[str], signal: bool = False, *extra: str) -> subprocess.CompletedProcess:
        data = tmp_path / f"data-{len(base)}-{signal}-{len(extra)}"
        data.mkdir()
        (data / "PG_VERSION").write_text("15\n")
        for oid in base:
            (data / "base" / oid).mkdir(parents=True)
        if signal:
            (data / "standby.signal").write_text("")
        return subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play),
                               "-e", json.dumps({"postgresql_standby_data_dir": str(data),
                                                "ansible_python_interpreter": sys.executable}), *extra],
                              cwd=ANSIBLE, env=tool_env(), capture_output=True, text=True, timeout=120)
    package_own = ["1", "4", "5"]
    assert run(package_own).returncode == 0                              # a fresh install: cloned over
    promoted = run([*package_own, "16384"])
    assert promoted.returncode != 0 and "holds databases beyond the package's own" in promoted.stdout, \
        promoted.stdout[-2000:]
    assert run([*package_own, "16384"], True).returncode == 0          # a standby already: kept as it is
    assert run([*package_own, "16384"], False, "-e", "postgresql_standby_reclone=true").returncode == 0


def test_an_engine_whose_source_is_not_set_stops_the_play_early_and_says_where_it_comes_from(
        tree: Tree, tmp_path: Path) -> None:
    """Issue 31 item 14: on Debian 12 neither engine installs from Debian, and
    the roles failed late (apt) or not at all clearly.  Each role now says
    first where its engine comes from and what to set."""
    for group, words in (("asterisk", "This Debian release has no asterisk package"),
                         ("freeswitch", "FreeSWITCH is in no Debian release")):
        inventory = tmp_path / f"{group}.yml"
        inventory.write_text(f"all:\n  children:\n    {group}:\n      hosts:\n        tree:\n"
                             "          ansible_connection: community.general.chroot\n"
                             f"          ansible_host: {tree.path}\n"
                             "          ansible_python_interpreter: /usr/bin/python3\n")
        r = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml"], cwd=ANSIBLE,
                           env=tool_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and words in r.stdout, r.stdout[-3000:]
        assert recap(r.stdout)["changed"] == 0                      # nothing touched before it stopped


def test_no_secret_is_committed_in_the_ansible_tree() -> None:
    """Secrets come only from the vault: no secret-named variable holds a
    literal anywhere (a reference to another variable, or empty), the
    shared variables map the roles' secrets to vault_* ones, the example
    vault holds placeholders, vault.yml is ignored by git."""
    for path in (p for p in ANSIBLE.rglob("*.yml") if p.name != "vault.yml"):
        text = path.read_text()
        for m in re.finditer(r"(?im)^\s*([a-z_]*(?:password|secret|token)[a-z_]*):\s*(.+)$", text):
            name, value = m.group(1), m.group(2).strip().strip('"')
            assert value == "" or value.startswith("{{") or name.endswith(("_rotate_password", "_user")), \
                f"{path}: {name} = {value}"
    shared = (ANSIBLE / "group_vars/all/main.yml").read_text()
    assert 'postgresql_db_password: "{{ vault_dustel_db_password }}"' in shared
    example = (ANSIBLE / "group_vars/all/vault.yml.example").read_text()
    assert all(v.startswith('"change-me') for v in re.findall(r"^vault_\w+: (.+)$", example, re.M))
    assert "group_vars/all/vault.yml" in (ANSIBLE / ".gitignore").read_text().split()


# ------------------------------------------------------------------ the tree

class Tree:
    """A copy of the cached pristine tree, /proc and /dev mounted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted: list[Path] = []

    def run(self, *cmd: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full = ["chroot", str(self.path), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                *(f"{k}={v}" for k, v in (env or {}).items()), *cmd]
        r = subprocess.run(full, capture_output=True, text=True, timeout=300)
        if check:
            assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
        return r

    def mount(self) -> None:
        for sub, how in (("proc", ["-t", "proc", "proc"]), ("dev", ["--rbind", "/dev"])):
            target = self.path / sub
            subprocess.run(["mount", *how, str(target)], check=True)
            self.mounted.append(target)

    def umount(self) -> None:
        while self.mounted:
            subprocess.run(["umount", "-l", str(self.mounted.pop())], check=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    if os.geteuid() != 0:
        pytest.skip("deployment test: needs root (mmdebstrap, chroot, mounts)")
    built = subprocess.run([str(ROOT / "scripts/deploy-tree.sh")], capture_output=True, text=True, timeout=900)
    if built.returncode != 0:
        why = (built.stderr or built.stdout).strip()[-300:]
        pytest.skip(f"deployment test: the Debian tree cannot be built: {why}")
    cached = Path(os.environ.get("DUSTEL_DEPLOY_TREE", "/var/cache/dustel/deploy-bookworm"))
    t = Tree(tmp_path_factory.mktemp("deploy") / "tree")
    subprocess.run(["cp", "-a", str(cached), str(t.path)], check=True)
    t.mount()
    try:
        yield t
    finally:
        t.run("pg_ctlcluster", "15", "main", "stop", check=False)
        t.umount()
        shutil.rmtree(t.path, ignore_errors=True)


SECRETS = {"vault_dustel_db_password": "db-pw-for-the-test",
           "vault_dustel_esl_password": "esl-pw-for-the-test",
           "vault_dustel_ami_secret": "ami-secret-for-the-test",
           "vault_dustel_portal_secret": "portal-secret-for-the-test"}


def playbook(tree: Tree, wheelhouse: Path, inventory: Path, *more: str) -> subprocess.CompletedProcess:
    extra = {**SECRETS, "dustel_version": VERSION, "dustel_wheelhouse": str(wheelhouse),
             "postgresql_service_manager": "pg_ctlcluster", "postgresql_port": PG_PORT,
             "postgresql_listen_addresses": "127.0.0.1", "postgresql_clients": ["127.0.0.1"],
             "dustel_db_host": "127.0.0.1", "dustel_manage_services": False,
             # the chroot's ansible_host is its path: the application host's address is loopback
             "dustel_app_addresses": ["127.0.0.1"],
             # the tree's apt lists are those of its build: never refreshed here (no network needed)
             "postgresql_apt_cache_valid_time": 10 ** 9, "dustel_apt_cache_valid_time": 10 ** 9}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml", "-e", json.dumps(extra),
                           *more],
                          cwd=ANSIBLE, env=tool_env(), capture_output=True, text=True, timeout=900)


def recap(out: str) -> dict[str, int]:
    m = re.search(r"^tree\s*:\s*(.*)$", out, re.M)
    assert m is not None, out[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def test_the_roles_deploy_dustel_and_postgresql_on_a_fresh_debian_tree(tree: Tree, tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    made = subprocess.run([str(ROOT / "scripts/wheelhouse.sh"), str(wheelhouse), str(BIN / "pip")],
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-2000:]
    # issue 31 item 13: database and app on one host, a FreeSWITCH node, no asterisk group at all (a subset of
    # the example inventory); the engine node is only in the inventory (--limit: no engine here)
    host = (f"        tree:\n          ansible_connection: community.general.chroot\n"
            f"          ansible_host: {tree.path}\n          ansible_python_interpreter: /usr/bin/python3\n")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  children:\n    database:\n      hosts:\n" + host + "    app:\n      hosts:\n"
                         "        tree:\n    freeswitch:\n      hosts:\n        fs1:\n"
                         "          ansible_host: 127.0.0.2\n")

    first = playbook(tree, wheelhouse, inventory, "--limit", "tree")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    r1 = recap(first.stdout)
    assert r1["failed"] == 0 and r1["changed"] > 0, r1
    toml = (tree.path / "etc/dustel/dustel.toml").read_text()
    assert '[[esl_nodes]]\nname = "fs1"\nhost = "127.0.0.2"' in toml and "[[ami_nodes]]" not in toml, toml
    # … and an Asterisk-only inventory (no freeswitch group) gets as far as the settings it writes (check mode)
    ast_only = tmp_path / "asterisk-only.yml"
    ast_only.write_text("all:\n  children:\n    database:\n      hosts:\n" + host + "    app:\n      hosts:\n"
                        "        tree:\n    asterisk:\n      hosts:\n        ast1:\n"
                        "          ansible_host: 127.0.0.3\n")
    checked = playbook(tree, wheelhouse, ast_only, "--limit", "tree", "--check", "--diff")
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert '+[[ami_nodes]]' in checked.stdout and '-[[esl_nodes]]' in checked.stdout
    second = playbook(tree, wheelhouse, inventory, "--limit", "tree")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert recap(second.stdout)["changed"] == 0, second.stdout[-4000:]

    # the installed CLI, against the PostgreSQL the role set up, with the service's configuration and secrets
    env = dict(line.split("=", 1) for line in (tree.path / "etc/dustel/dustel.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert (tree.path / "etc/dustel/dustel.env").stat().st_mode & 0o777 == 0o600
    cli = ["/opt/dustel/venv/bin/dustel", "--state-dir", "/var/lib/dustel", "--config", "/etc/dustel/dustel.toml"]
    assert "Usage: dustel" in tree.run(*cli, "--help").stdout
    migrated = tree.run(*cli, "db", "migrate", "--json", env=env)
    assert json.loads(migrated.stdout) == {"applied": []}          # the role applied them all
    status = json.loads(tree.run(*cli, "db", "status", "--json", env=env).stdout)
    assert status["pending"] == [] and len(status["applied"]) >= 13, status
    # the runbook's commands as an operator types them: as root, from any directory, no flags, no environment
    # (issue 31: before, they started a new, empty embedded PostgreSQL in ./.dustel)
    assert (tree.path / "etc/dustel/secrets.toml").stat().st_mode & 0o777 == 0o600
    bare = "/opt/dustel/venv/bin/dustel"
    plain = json.loads(tree.run(bare, "db", "status", "--json", env={}).stdout)
    assert plain["state_dir"] == "/var/lib/dustel" and plain["database"] == "DATABASE_URL", plain
    assert plain["found_by"] == "state_dir in /etc/dustel/dustel.toml" and plain["pending"] == []
    assert json.loads(tree.run(bare, "call", "list", "--json", env={}).stdout) == []
    checked = tree.run(bare, "render", "--check", env={}, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr          # no drift from what the role rendered
    assert not (tree.path / ".dustel").exists() and not (tree.path / "var/lib/dustel/pg").exists()
    assert (tree.path / "var/lib/dustel/etc/asterisk/extensions.conf").exists()
    assert (tree.path / "var/lib/dustel/etc/freeswitch/dialplan/public.xml").exists()
    # PostgreSQL takes the application hosts only, with a password
    hba = (tree.path / "etc/postgresql/15/main/pg_hba.conf").read_text()
    assert re.search(r"^host\s+dustel\s+dustel\s+127\.0\.0\.1/32\s+scram-sha-256", hba, re.M), hba
    wrong = tree.run("psql", f"postgresql://dustel:wrong@127.0.0.1:{PG_PORT}/dustel", "-c", "SELECT 1", check=False)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr

    # the units: hardened, and systemd accepts them
    units = sorted(p.name for p in (tree.path / "etc/systemd/system").glob("dustel-*.service"))
    assert units == ["dustel-agi.service", "dustel-controller.service", "dustel-esl.service",
                     "dustel-fax-deliver.service", "dustel-mailgw.service", "dustel-portal.service",
                     "dustel-scheduler.service", "dustel-xmlcurl.service"]
    for name in units:
        text = (tree.path / "etc/systemd/system" / name).read_text()
        for line in ("Type=simple", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "ProtectHome=yes", "PrivateTmp=yes", "User=dustel", "EnvironmentFile=/etc/dustel/dustel.env"):
            assert line in text.splitlines(), (name, line)
        # issue 26: what takes documents from outside is capped (a PDF bomb never takes the host's memory)
        assert ("MemoryMax=512M" in text.splitlines()) == (name in ("dustel-mailgw.service",
                                                                     "dustel-fax-deliver.service")), name
    verify = tree.run("systemd-analyze", "verify", *(f"/etc/systemd/system/{u}" for u in units), check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
