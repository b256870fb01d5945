-- Issue 14: faxes to send.  A job is queued only after its document was
-- converted; the deliverer places the call (an outbound call of the tenant
-- through the call-time policy), the engine reports the result, busy / no
-- answer / a failed transmission are retried, and the sender gets a report.
CREATE TABLE fax_jobs (
    id              bigserial PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    from_number     text NOT NULL CHECK (from_number ~ '^\+[1-9][0-9]{5,14}$'),
    to_number       text NOT NULL CHECK (to_number ~ '^\+[1-9][0-9]{5,14}$'),
    pages           integer NOT NULL CHECK (pages > 0),
    tiff            bytea NOT NULL,
    report_to       text,
    state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_result     text NOT NULL DEFAULT '',
    pages_sent      integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX fax_jobs_due ON fax_jobs (next_attempt_at) WHERE state IN ('queued', 'sending');
ALTER TABLE mail_outbox DROP CONSTRAINT mail_outbox_kind_check;
ALTER TABLE mail_outbox ADD CONSTRAINT mail_outbox_kind_check
    CHECK (kind IN ('fax_in', 'failure_report', 'fax_report'));
