"""``dustel health``: what needs a person, counted — for a monitoring check
(exit status 1 when any count is not zero) and for the morning look.

Each check is one query over the database, so it answers the same from any
app host, whichever process (deliverer, scheduler, controller) is the one
that fell behind:

- ``mail_failed``: mails the outbox gave up on in the last 7 days (a 5xx,
  an unbuildable row, or retried for ``mail_max_age_hours``): fix the
  address or the relay, then ``fax retry``; ``fax list --failed`` lists them;
- ``mail_delayed``: mails still queued an hour after they were made, whose
  last attempt failed: the relay is down or refusing (visible long before
  the outbox gives up);
- ``fax_jobs_stuck``: fax jobs the engine never reported on (``sending`` for
  longer than ``outbound.STUCK_SECONDS``): the deliverer is not running;
- ``reservations_overdue``: call reservations past their expiry still held:
  the scheduler's expiry job is not running;
- ``reconcile``: calls whose money and CDR disagree that ``billing reconcile
  --fix`` would fix;
- ``own_number_targets``: forwarding / group call / fallback / closed-queue
  targets that are the tenant's own numbers, stored before the database
  refused them (the call path skips them; a person should name the account).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from .billing import reconcile
from .callpath import calls
from .fax import outbound


@dataclass(frozen=True)
class Check:
    name: str
    count: int
    what: str


_COUNTS = """
SELECT (SELECT count(*) FROM mail_outbox WHERE state = 'failed' AND created_at > now() - interval '7 days')
           AS mail_failed,
       (SELECT count(*) FROM mail_outbox WHERE state = 'queued' AND attempts > 0
           AND created_at < now() - interval '1 hour') AS mail_delayed,
       (SELECT count(*) FROM fax_jobs WHERE state = 'sending'
           AND updated_at < now() - make_interval(secs => %(stuck)s)) AS fax_jobs_stuck,
       (SELECT count(*) FROM calls WHERE state = 'active' AND expires_at < now()) AS reservations_overdue,
       (SELECT count(*) FROM (SELECT tenant_id, external_e164 AS x FROM diversion_targets
                              UNION ALL SELECT tenant_id, fallback_e164 FROM ring_groups
                              UNION ALL SELECT tenant_id, closed_target FROM queues) t
         WHERE x LIKE '+%%' AND dustel_own_number(tenant_id, x) IS NOT NULL) AS own_number_targets
"""

ADVICE = {
    "mail_failed": "mails given up on in the last 7 days: `dustel fax list --failed`, fix, then `fax retry`",
    "mail_delayed": "mails queued over an hour with failed attempts: is the relay (smtp_host) up?",
    "fax_jobs_stuck": "fax jobs with no result from the engine: is `dustel fax deliver --loop` running?",
    "reservations_overdue": "reservations past their expiry: is `dustel scheduler run` running?",
    "reconcile": "calls whose money and CDR disagree: `dustel billing reconcile`, then `--fix`",
    "own_number_targets": "external targets that are the tenant's own numbers (set before that was refused): "
                          "skipped at call time; name the account they ring instead",
}


def checks(conn: psycopg.Connection) -> list[Check]:
    row = conn.execute(_COUNTS, {"stuck": outbound.STUCK_SECONDS}).fetchone()
    counts: dict[str, Any] = dict(row)
    found = calls.run_sync(conn, reconcile.reconcile(None, fix=False))
    counts["reconcile"] = sum(1 for f in found if f.action == "would fix")
    return [Check(name, int(counts[name]), what) for name, what in ADVICE.items()]


def as_dict(found: list[Check]) -> dict[str, Any]:
    return {"ok": not any(c.count for c in found), "checks": [asdict(c) for c in found]}
