"""The dustel CLI as an operator uses it: help, JSON, errors, demo."""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import click
import psycopg
import pytest

from dustel.cli import cli
from tests.conftest import Cli, dump

PW = "Cli-Passw0rd-4711"


def _without_sequences(d: dict[str, Any]) -> dict[str, Any]:
    # Sequences are not transactional in PostgreSQL: a refused insert may
    # leave a gap in ids, which is not data.
    return {k: v for k, v in d.items() if k != "_sequences"}


@pytest.fixture
def provider(run: Cli) -> dict[str, str]:
    """A small provider built through the CLI itself."""
    run.ok("tenant", "add", "--name", "Kiosk Yilmaz", "--type", "business", "--plan", "starter",
           "--street", "Kölner Str. 3", "--postcode", "40211", "--city", "Düsseldorf", "--area-code", "0211")
    run.ok("tenant", "add", "--name", "Rheinwerk GmbH", "--type", "business", "--plan", "business_flex",
           "--street", "Kö 1", "--postcode", "40212", "--city", "Düsseldorf", "--area-code", "0211")
    run.ok("tenant", "set", "2", "--option", "acd=1", "--option", "extra_account=2")
    u1 = json.loads(run.ok("account", "add", "1", "--password-stdin", "--json", input=PW + "\n").stdout)["username"]
    u2 = json.loads(run.ok("account", "add", "2", "--password-stdin", "--json", input=PW + "\n").stdout)["username"]
    u3 = json.loads(run.ok("account", "add", "2", "--password-stdin", "--json", input=PW + "\n").stdout)["username"]
    run.ok("number", "add", "1", "+492111111111")
    run.ok("number", "add", "2", "+4921122222", "--block", "10")
    run.ok("number", "assign", "+4921122222", "--account", u2)
    run.ok("queue", "add", "2", "support", "--code", "1")
    run.ok("forward", "set", u2, "--mode", "no-answer", "--to", u3, "--to", "+4917012345678")
    return {"starter_user": u1, "biz_user": u2, "biz_user2": u3}


def test_help_everywhere(run: Cli) -> None:
    def walk(cmd: click.Command, path: list[str]) -> list[list[str]]:
        out = [path]
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                out += walk(sub, [*path, name])
        return out

    paths = walk(cli, [])
    assert len(paths) > 50
    for path in paths:
        r = run(*path, "--help")
        assert r.exit_code == 0, path
        assert "Usage:" in r.stdout and len(r.stdout.splitlines()) >= 3, path


def test_json_output_is_parseable(run: Cli, provider: dict[str, str]) -> None:
    tenants = json.loads(run.ok("tenant", "list", "--json").stdout)
    assert [t["plan"] for t in tenants] == ["starter", "business_flex"]
    show = json.loads(run.ok("tenant", "show", "2", "--json").stdout)
    assert show["limits"]["accounts_max"] == 4 and show["counts"]["accounts"] == 2
    nums = json.loads(run.ok("number", "list", "--tenant", "2", "--json").stdout)
    assert nums == [{"block_size": 10, "central_ddi": None, "e164": "+4921122222", "id": nums[0]["id"],
                     "origin": "new", "status": "active", "target": provider["biz_user"],
                     "target_kind": "account", "tenant_id": 2}]
    fwd = json.loads(run.ok("forward", "show", provider["biz_user"], "--json").stdout)
    assert fwd["targets"] == [provider["biz_user2"], "+4917012345678"] and fwd["timeout_seconds"] == 20
    st = json.loads(run.ok("db", "status", "--json").stdout)
    assert st["pending"] == [] and st["applied"]
    assert json.loads(run.ok("db", "migrate", "--json").stdout) == {"applied": []}


def test_refusals_through_the_cli(run: Cli, provider: dict[str, str]) -> None:
    for _ in range(4):
        run.ok("account", "add", "1", "--password-stdin", input=PW + "\n")
    r = run("account", "add", "1", "--password-stdin", input=PW + "\n")
    assert r.exit_code == 1 and r.stderr == "error: account: plan starter allows at most 5 SIP accounts\n"
    r = run("tenant", "add", "--name", "ACME GmbH", "--type", "business", "--plan", "complete",
            "--street", "A 1", "--postcode", "40211", "--city", "D", "--area-code", "0211")
    assert r.exit_code == 1 and r.stderr.startswith("error: customer_type: not allowed on this plan")
    r = run("number", "remove", "+49211222225")
    assert r.exit_code == 1 and "a block is never split" in r.stderr
    r = run("number", "add", "1", "+4989123456")
    assert r.exit_code == 1 and "outside the tenant's area codes (0211)" in r.stderr
    r = run("forward", "set", provider["biz_user2"], "--mode", "immediate", "--to", provider["biz_user"])
    assert r.exit_code == 1 and "is a forwarding/group target of" in r.stderr
    r = run("queue", "add", "1", "hotline", "--code", "2")
    assert r.exit_code == 1 and "acd option" in r.stderr
    # a ring group's fallback: an account of the tenant or an E.164 number; nothing half-written on error
    r = run("ringgroup", "add", "2", "sales", "--member", provider["biz_user"], "--fallback", "x@y")
    assert r.exit_code == 1 and r.stderr.startswith("error: fallback: must be a phone number"), r.stderr
    r = run("ringgroup", "add", "2", "sales", "--member", provider["biz_user"], "--fallback", "000387999999")
    assert r.exit_code == 1 and r.stderr.startswith("error: fallback: 000387999999 is not a SIP account"), r.stderr
    r = run("ringgroup", "add", "2", "sales", "--member", provider["biz_user"], "--ring-seconds", "2")
    assert r.exit_code == 1 and r.stderr == "error: ring_seconds: must be 5 to 300 seconds\n"
    assert json.loads(run.ok("ringgroup", "add", "2", "sales", "--member", provider["biz_user"], "--fallback",
                             "+4917012345678", "--json").stdout)["fallback_e164"] == "+4917012345678"


def test_no_plaintext_password_in_database_or_output(run: Cli, provider: dict[str, str]) -> None:
    secret = "Zebra-Kobold-9173"
    outputs = []
    r = run.ok("account", "add", "2", "--password-stdin", "--json", input=secret + "\n")
    outputs.append(r.output)
    user = json.loads(r.stdout)["username"]
    outputs.append(run.ok("account", "passwd", user, "--password-stdin", input=secret + "x\n").output)
    # the interactive prompt hides the input
    r = run("account", "passwd", user, input=f"{secret}y\n{secret}y\n")
    assert r.exit_code == 0
    outputs.append(r.output)
    for args in (("account", "show", user), ("account", "show", user, "--json"), ("account", "list"),
                 ("account", "list", "--json"), ("tenant", "show", "2", "--json")):
        outputs.append(run.ok(*args).output)
    # a refused password is not echoed either
    r = run("account", "passwd", user, "--password-stdin", input="Zebra Kobold 9173\n")
    assert r.exit_code == 1
    outputs.append(r.output)
    for out in outputs:
        assert "Zebra" not in out and "Kobold" not in out
    everything = json.dumps(dump(run.url), default=str)
    assert "Zebra" not in everything and "Kobold" not in everything
    assert PW not in everything


# A corpus of bad input: every case must exit non-zero with exactly one line
# on stderr, print nothing on stdout, and leave the database unchanged.
NASTY = ["", "x" * 5000, "Mül\u202eler", "'; DROP TABLE tenants; --", "$(rm -rf /)", "`id`",
         "a\nb", "nul\x00byte", "١٢٣", "-1", "1e3", "<script>", "%s%s%n", "../../etc/passwd"]
TEXT_BAD = ["", "   ", "x" * 5000, "Mül\u202eler", "a\nb", "nul\x00byte", "tab\there", "\x1b[31mred"]


def _corpus(u: dict[str, str]) -> list[list[str]]:
    tenant = ["tenant", "add", "--type", "business", "--plan", "starter", "--street", "S 1",
              "--postcode", "40211", "--city", "D", "--area-code", "0211"]
    cases: list[list[str]] = []
    for bad in TEXT_BAD:   # free text (names, carrier): only what is really bad for text
        cases.append([*tenant, "--name", bad])
        cases.append(["number", "port", "in", "1", "+492114444444", "--carrier", bad])
        cases.append(["agent", "add", "2", bad, "--pin-stdin"])
    for bad in NASTY:      # structured fields: every nasty value is wrong
        if bad != "1e3":   # a fine queue name (slug)
            cases.append(["queue", "add", "2", bad, "--code", "5"])
        cases += [
            [*tenant, "--name", "OK", "--email", bad] if bad else [*tenant, "--name", "OK", "--email", "@"],
            [*tenant[:-2], "--area-code", bad, "--name", "OK"],
            ["tenant", "add", "--name", "OK", "--type", "business", "--plan", bad, "--street", "S",
             "--postcode", "40211", "--city", "D", "--area-code", "0211"],
            [*tenant, "--name", "OK", "--domain", bad],
            [*tenant, "--name", "OK", "--timezone", bad],
            [*tenant, "--name", "OK", "--created-on", bad],
            ["tenant", "show", bad],
            ["tenant", "set", "1", "--option", bad],
            ["account", "add", "1", "--password-stdin", "--username", bad],
            ["account", "add", "1", "--password-stdin", "--allow-ip", bad],
            ["account", "add", "1", "--password-stdin", "--caller-id", bad],
            ["account", "add", "1", "--password-stdin", "--location", bad],
            ["account", "add", "1", "--password-stdin", "--tls", bad],
            ["account", "set", u["starter_user"], "--caller-id", bad or "+"],
            ["account", "show", bad],
            ["number", "add", "1", bad],
            ["number", "add", "2", "+4921133333", "--block", bad],
            ["number", "assign", bad, "--account", u["starter_user"]],
            ["number", "assign", "+492111111111", "--account", bad],
            ["forward", "set", u["biz_user2"], "--mode", "immediate", "--to", bad],
            ["forward", "set", u["biz_user2"], "--mode", bad, "--to", "+4917011111111"],
            ["forward", "set", u["biz_user2"], "--mode", "immediate", "--to", "+4917011111111", "--when", bad],
            ["limits", "set", "1", "--credit-limit", bad],
            ["limits", "set", "1", "--max-call-seconds", bad],
            ["zones", "set", u["starter_user"], "--preset", bad],
            ["blacklist", "add", u["starter_user"], bad],
            ["speeddial", "set", "1", bad, "+4921112345"],
            ["speeddial", "set", "1", "7", bad],
            ["queue", "add", "2", "hotline", "--code", bad],
        ]
    return cases


def test_bad_input_corpus(run: Cli, provider: dict[str, str]) -> None:
    before = _without_sequences(dump(run.url))
    cases = _corpus(provider)
    assert len(cases) > 400
    for args in cases:
        r = run(*args, input=PW + "\n")
        assert r.exit_code != 0, (" ".join(map(repr, args)), r.stdout)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert r.stdout == "", (args, r.stdout)
    assert _without_sequences(dump(run.url)) == before


def test_password_corpus(run: Cli, provider: dict[str, str]) -> None:
    before = _without_sequences(dump(run.url))
    for bad in ["", "short1", "with spaces 12345", "ümlautpasswort1", "x" * 129 + "1", "onlyletterslong",
                "123456789012345", "tab\there123456"]:
        for cmd in (["account", "add", "2", "--password-stdin"],
                    ["account", "passwd", provider["biz_user"], "--password-stdin"]):
            r = run(*cmd, input=bad + "\n")
            assert r.exit_code == 1 and r.stderr.startswith("error: password: "), (bad, r.stderr)
            assert len(r.stderr.splitlines()) == 1
    assert _without_sequences(dump(run.url)) == before


def test_demo_twice_changes_nothing(run: Cli, tmp_path: Any) -> None:
    r = run.ok("demo")
    assert "demo provider loaded" in r.stdout
    for plan in ("starter", "complete", "business_flex"):
        assert plan in r.stdout
    data = json.loads(run.ok("tenant", "list", "--json").stdout)
    assert sorted(t["plan"] for t in data) == ["business_flex", "complete", "starter"]
    creds = (tmp_path / "state" / "demo-credentials.txt")
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    lines = [ln for ln in creds.read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == 13                      # 10 SIP accounts, 3 Kundencenter users (issue 28)
    assert [ln.split()[0] for ln in lines[10:]] == ["rheinwerk-admin", "rheinwerk-supervisor", "petra.meyer"]
    for ln in lines:   # the demo passwords appear nowhere but in that file
        assert ln.split()[1] not in r.output
    before = dump(run.url)
    r2 = run.ok("demo")
    assert "already loaded, nothing changed" in r2.stdout
    assert dump(run.url) == before
    summary = json.loads(run.ok("demo", "--json").stdout)
    assert {p["plan"]: p["tenants"] for p in summary["plans"]} == {"business_flex": 1, "complete": 1, "starter": 1}
    assert summary["queues"] == 1 and summary["agents"] == 3
    # issue 31 item 9: the demo had no queue events, so the suggested `queue stats` printed only a header;
    # it makes a day of traffic through the controller's event path, and the suggestion shows it
    hint = next(ln.strip() for ln in r.stdout.splitlines() if " queue stats " in ln)
    args = hint.split("#")[0].split()[3:]                      # after `.venv/bin/dustel --state-dir DIR`
    day = list(csv.DictReader(io.StringIO(run.ok(*args).output)))
    assert len(day) == 24 and sum(int(h["offered"]) for h in day) > 200
    assert all(int(h["offered"]) == 0 for h in day if not 8 <= int(h["start"][11:13]) < 19)
    raw = {k: n for k, n in run_rows(run.url, """SELECT kind, count(*) FROM queue_events
                                                  WHERE at >= '2026-11-30 00:00+01' AND at < '2026-12-01 00:00+01'
                                                  GROUP BY kind""")}
    assert sum(int(h["answered"]) for h in day) == raw["answered"]
    assert sum(int(h["abandoned"]) for h in day) == raw["abandoned"] > 0
    assert sum(int(h["timed_out"]) for h in day) == raw["timeout"] > 0
    agents = list(csv.DictReader(io.StringIO(run.ok(*args[:-2], "--by", "agent").output)))
    assert len(agents) == 3 and {a["agent"] for a in agents if a["calls_taken"] != "0"} == {"Cem Yilmaz",
                                                                                          "Petra Meyer"}
    assert summary["rendered"]["asterisk"] == {"out": str(tmp_path / "state" / "etc" / "asterisk"),
                                               "files": 5, "changed": 0}
    assert (tmp_path / "state" / "etc" / "freeswitch" / "dialplan" / "public.xml").exists()


def run_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return c.execute(sql).fetchall()


def test_small_review_findings(run: Cli, conn: psycopg.Connection) -> None:
    """Issue 15.19: a credit limit could not be removed; speeddial accepted
    another tenant's account; list commands answered an unknown tenant with
    "(none)" and exit 0."""
    run.ok("demo")
    run.ok("limits", "set", "3", "--credit-limit", "50")
    assert conn.execute("SELECT monthly_credit_limit_cents FROM tenants WHERE id = 3").fetchone()[
        "monthly_credit_limit_cents"] == 5000
    run.ok("limits", "set", "3", "--credit-limit", "none")
    assert conn.execute("SELECT monthly_credit_limit_cents FROM tenants WHERE id = 3").fetchone()[
        "monthly_credit_limit_cents"] is None
    other = conn.execute("SELECT username FROM sip_accounts WHERE tenant_id = 1 ORDER BY id").fetchone()["username"]
    r = run("speeddial", "set", "3", "7", other)
    assert r.exit_code == 1 and r.stderr.startswith("error: target:") and "tenant 3" in r.stderr
    assert conn.execute("SELECT count(*) AS n FROM speed_dials WHERE code = '7'").fetchone()["n"] == 0
    for cmd in (("faxbox", "list", "--tenant", "999"), ("queue", "list", "--tenant", "999")):
        r = run(*cmd)
        assert r.exit_code == 1 and r.stderr.startswith("error: tenant"), (cmd, r.stderr)


def test_errors_name_the_field_and_the_rule_and_speak_json_under_json(run: Cli, provider: dict[str, str]) -> None:
    """Issue 31 item 5: `credit topup 1 -5` said "No such option '-5'" (no
    field), `--credit-limit -5` "must be an amount such as 50" (not the
    rule it broke), and errors under --json were plain text."""
    r = run("credit", "topup", "1", "-5", "--ref", "x")
    assert (r.exit_code, r.stderr) == (1, "error: amount: must not be negative\n")
    r = run("limits", "set", "1", "--credit-limit", "-5")
    assert (r.exit_code, r.stderr) == (1, "error: credit_limit: must not be negative\n")
    r = run("credit", "topup", "1", "-5", "--ref", "x", "--json")
    assert r.exit_code == 1 and r.stdout == ""
    assert json.loads(r.stderr) == {"error": {"field": "amount", "rule": "must not be negative"}}
    r = run("tenant", "show", "999", "--json")
    assert r.exit_code == 1 and json.loads(r.stderr)["error"]["field"] == "tenant"
    r = run("tenant", "show", "x", "--json")                           # a usage error names its parameter
    assert r.exit_code == 2 and json.loads(r.stderr)["error"] == {
        "field": "tenant_id", "rule": "Invalid value for 'TENANT_ID': 'x' is not a whole number"}
    r = run("tenant", "list", "--json", "--bogus")
    assert r.exit_code == 2 and json.loads(r.stderr)["error"]["field"] == "bogus"


@pytest.mark.parametrize("bad", ["nul\x00byte", "line\nbreak", "tab\there", "nel\x85x", "ls\u2028x", "rlo\u202ex"])
def test_one_text_rule_at_the_edge_of_every_field(run: Cli, provider: dict[str, str], bad: str) -> None:
    """Issue 31 item 17: NUL reached PostgreSQL in 7 fields and came back as
    'database: PostgreSQL text fields cannot contain NUL'; U+2028 and U+0085
    were stored verbatim in 20 free-text fields.  Every text on the command
    line now meets one rule first, named by its parameter."""
    before = _without_sequences(dump(run.url))
    for args, field in (
            (["tenant", "set", "2", "--plan", bad], "plan"),
            (["tenant", "set", "2", "--option", bad], "options"),
            (["queue", "hours", "2", "support", "--open", "mon-fri 08:00-18:00", "--closed-target", bad],
             "closed_target"),
            (["billing", "profile", "2", "--vat-id", bad], "vat_id"),
            (["zones", "set", provider["starter_user"], "--preset", bad], "preset"),
            (["credit", "topup", "1", "5", "--ref", bad], "ref"),
            (["tenant", "add", "--name", bad, "--type", "business", "--plan", "starter", "--street", "S 1",
              "--postcode", "40211", "--city", "D", "--area-code", "0211"], "name"),
            (["faxbox", "add", "2", bad, "--email", "a@example.org"], "name")):
        r = run(*args)
        assert r.exit_code == 1, (args, r.output)
        assert r.stderr.startswith(f"error: {field}: must not contain control characters or line breaks (U+"), \
            (args, r.stderr)
    assert _without_sequences(dump(run.url)) == before


def test_names_and_targets_meet_the_same_rule_everywhere(run: Cli, provider: dict[str, str]) -> None:
    """Issue 31 item 20: `queue add --moh` took a class that does not exist
    (`queue set --moh` refused it); names were stripped on add but not on
    remove; `number assign --queue ''` was a usage error naming no field."""
    r = run("queue", "add", "2", "hotline", "--code", "2", "--moh", "jazz")
    assert (r.exit_code, r.stderr) == (1, "error: moh: tenant 2 has no hold music class 'jazz' (dustel moh upload)\n")
    run.ok("faxbox", "add", "2", " office ", "--email", "office@example.org")
    run.ok("faxbox", "set", "2", " office", "--email", "desk@example.org")
    run.ok("faxbox", "remove", "2", " office")
    r = run("number", "assign", "+4921122222", "--queue", "")
    assert (r.exit_code, r.stderr) == (1, "error: queue: must be 1-32 characters a-z, 0-9, '_' or '-', starting "
                                          "with a letter or digit\n")


def test_every_list_takes_the_tenant_the_same_way(run: Cli, provider: dict[str, str]) -> None:
    """Issue 31 item 6: `queue list` took the tenant as an argument where
    other lists take --tenant.  Every list takes `--tenant T`."""
    import click as _click
    lists = []

    def walk(cmd: _click.Command, path: list[str]) -> None:
        if isinstance(cmd, _click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        elif path[-1] in ("list", "jobs"):
            lists.append((path, cmd))

    walk(cli, [])
    for path, cmd in lists:
        names = {p.name: p for p in cmd.params}
        assert not any(isinstance(p, _click.Argument) and p.name == "tenant_id" for p in cmd.params), path
        if "tenant_id" in names:
            assert names["tenant_id"].opts == ["--tenant"], path
    assert [r["name"] for r in json.loads(run.ok("queue", "list", "--tenant", "2", "--json").stdout)] == ["support"]
    assert json.loads(run.ok("queue", "list", "--json").stdout)[0]["tenant_id"] == 2


def test_money_reads_one_way_and_times_in_the_tenants_zone(run: Cli, provider: dict[str, str]) -> None:
    """Issue 31 item 10: money appeared as `20.00 EUR` (credit), `20,00 EUR`
    (ledger) and raw cents (invoice list); ledger times were raw UTC with
    microseconds."""
    run.ok("tenant", "set", "1", "--timezone", "America/New_York")
    assert "balance 20,00 €" in run.ok("credit", "topup", "1", "20", "--ref", "bank-1").stdout
    assert "balance 20,00 €, reserved 0,00 €" in run.ok("credit", "show", "1").stdout
    out = run.ok("ledger", "1").stdout
    head, line = out.splitlines()[:2]
    assert head.split() == ["created_at", "kind", "amount", "ref"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d E[SD]T +topup +20,00 € +topup:bank-1", line), line
    assert "balance 20,00 €" in out
    js = json.loads(run.ok("ledger", "1", "--json").stdout)
    assert js["balance_cents"] == 2000 and js["movements"][0]["amount_cents"] == 2000
    assert js["movements"][0]["created_at"].endswith("+00:00")       # JSON: ISO, UTC, as stored
