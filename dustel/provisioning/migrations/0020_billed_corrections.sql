-- depends: 0017_calls_legs_index
-- Issue 26.9: a reconciliation's correction is billed exactly once.  The
-- correction (an `adjust` ledger row) rewrites its call's charge; an invoice
-- of the call's month not issued yet bills the corrected charge, and one
-- issued already gets the difference as a line of the next invoice.  To
-- tell which, a correction names its call, and the invoice that billed it
-- (either way) is written into its invoice_id.

ALTER TABLE ledger ADD COLUMN call_node text, ADD COLUMN call_id text;
ALTER TABLE ledger ADD CONSTRAINT ledger_call_link CHECK ((call_node IS NULL) = (call_id IS NULL));

-- earlier corrections: their call from the reference reconcile:<node>:<call>:<billsec>
-- (the call's billsec is the one the correction set; call ids may hold ':')
UPDATE ledger l SET call_node = c.node, call_id = c.call_id
  FROM calls c
 WHERE l.kind = 'adjust' AND l.ref LIKE 'reconcile:%'
   AND l.ref = 'reconcile:' || c.node || ':' || c.call_id || ':' || c.billsec;

-- … and billed as the invoices before this change billed them: by the
-- invoice of the month they were booked in, where there is one
UPDATE ledger l SET invoice_id = i.id
  FROM tenants t, invoices i
 WHERE l.kind = 'adjust' AND l.invoice_id IS NULL AND t.id = l.tenant_id
   AND i.tenant_id = l.tenant_id AND i.kind = 'invoice'
   AND i.period = date_trunc('month', l.created_at AT TIME ZONE t.timezone)::date;

-- the corrections no invoice has billed yet: what an invoice run reads
CREATE INDEX ledger_open_corrections ON ledger (tenant_id) WHERE kind = 'adjust' AND invoice_id IS NULL;
