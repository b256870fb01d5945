-- depends: 0020_billed_corrections
-- Issue 26.10: every call is billed by the plan in force when it was made.
-- A plan change is a moment (plan_changed_at; NULL: the plan the tenant
-- started with); an invoice bills one plan period of one month (plan_from:
-- the tenant's plan_changed_at then), so a month with a change has an
-- invoice closing the postpaid plan left (issued at the change) and, with a
-- postpaid plan after it, one for the rest of the month.

ALTER TABLE tenants ADD COLUMN plan_changed_at timestamptz;
ALTER TABLE invoices ADD COLUMN plan_from timestamptz;

DROP INDEX invoices_one_per_month;
CREATE UNIQUE INDEX invoices_one_per_plan_month
    ON invoices (tenant_id, period, coalesce(plan_from, '-infinity'::timestamptz)) WHERE kind = 'invoice';
