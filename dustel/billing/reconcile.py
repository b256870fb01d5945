"""Reconciliation: calls whose money and CDR disagree (``dustel billing
reconcile``), as a sans-IO flow (``calls`` drivers).

The CDR (written by the controller from the engine's own hangup) is the
truth about how long a call talked; the ``calls`` row is what money moved.
Problems, and what ``fix`` does:

- ``active_with_cdr``: the call ended, its settlement never came → settle
  from the CDR;
- ``expired_with_cdr``: the reservation expired unbilled, the CDR came
  later → settle from the CDR (free seconds only where still left);
- ``active_overdue``: no hangup, no CDR, past its expiry → release the
  reservation (``calls.expire``);
- ``charge_differs``: settled with other cents than the CDR's billsec
  gives → an ``adjust`` ledger row with the difference (idempotent by
  reference, naming its call), the call updated to the CDR.  An invoice
  bills the correction once: in the call's charge while the call's month
  is not invoiced, else as a line of the next invoice (``invoices``);
- ``expired_without_cdr``: nothing known of the call's length → listed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from ..callpath import calls
from ..callpath.calls import Flow, Q

_FIND = """
SELECT c.*, d.billsec AS cdr_billsec, c.expires_at < now() AS overdue
  FROM calls c LEFT JOIN cdrs d ON d.node = c.node AND d.call_id = c.call_id
 WHERE (%(t)s::bigint IS NULL OR c.tenant_id = %(t)s)
   AND (c.state = 'expired'
        OR (c.state = 'active' AND (d.call_id IS NOT NULL OR c.expires_at < now()))
        OR (c.state = 'settled' AND d.call_id IS NOT NULL AND d.billsec <> c.billsec))
 ORDER BY c.started_at, c.node, c.call_id
"""


@dataclass(frozen=True)
class Finding:
    node: str
    call_id: str
    tenant_id: int
    problem: str
    charged_cents: int | None
    due_cents: int | None
    action: str            # what fix did / would do


def problem_of(row: dict[str, Any]) -> tuple[str, int | None]:
    """(problem, cents the CDR says are due) of a found row; '' when the
    money agrees after all (billsec differs, cents do not)."""
    cdr = row["cdr_billsec"]
    if row["state"] == "active":
        return ("active_with_cdr", calls.charge_for(row, cdr)[0]) if cdr is not None else ("active_overdue", None)
    if row["state"] == "expired":
        return ("expired_with_cdr", calls.charge_for(row, cdr)[0]) if cdr is not None else \
            ("expired_without_cdr", None)
    due = calls.charge_for(row, cdr)[0]
    return ("charge_differs", due) if due != row["charged_cents"] else ("", due)


def reconcile(tenant_id: int | None = None, fix: bool = False) -> Flow:
    rows = (yield Q(_FIND, {"t": tenant_id}))
    out: list[Finding] = []
    for row in rows:
        problem, due = problem_of(row)
        if not problem:
            continue
        action = "none"
        if fix and problem in ("active_with_cdr", "expired_with_cdr"):
            st = yield from calls.settle(row["node"], row["call_id"], row["cdr_billsec"])
            action = f"settled {st.charged_cents} ct"
            due = st.charged_cents
        elif fix and problem == "charge_differs":
            action = yield from _adjust(row, int(due or 0))
        elif fix and problem == "active_overdue":
            n = yield from calls.expire()
            action = f"released ({n} expired)"
        elif problem != "expired_without_cdr":
            action = "would fix"
        out.append(Finding(row["node"], row["call_id"], row["tenant_id"], problem, row["charged_cents"], due, action))
    return out


def _adjust(row: dict[str, Any], due: int) -> Flow:
    diff = due - int(row["charged_cents"] or 0)
    ref = f"reconcile:{row['node']}:{row['call_id']}:{row['cdr_billsec']}"
    done = yield Q(calls.BOOK, {"rows": Jsonb([calls.book_row(row["tenant_id"], -diff, "adjust", ref)])})
    if done:
        key = {"b": row["cdr_billsec"], "c": due, "n": row["node"], "call": row["call_id"], "ref": ref}
        # the call's charge is what the engine says; the correction names its
        # call, so that an invoice bills it once (invoices.drafts)
        yield [Q("""UPDATE calls SET billsec = %(b)s, charged_cents = %(c)s
                     WHERE node = %(n)s AND call_id = %(call)s""", key),
               Q("UPDATE ledger SET call_node = %(n)s, call_id = %(call)s WHERE ref = %(ref)s", key)]
    return f"adjusted {diff:+d} ct"
