-- Issue 14 (F-08): received faxes, and a durable mail outbox — a fax is
-- never lost to an SMTP server that is down: its mail waits here, retried
-- with backoff, until delivered or (after the last attempt) reported to the
-- tenant's address.
CREATE TABLE faxes (
    id             bigserial PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    direction      text NOT NULL CHECK (direction IN ('in', 'out')),
    faxbox         text NOT NULL,
    node           text NOT NULL,
    call_id        text NOT NULL,
    remote_number  text NOT NULL DEFAULT '',
    remote_station text NOT NULL DEFAULT '',
    status         text NOT NULL CHECK (status IN ('received', 'partial', 'failed')),
    pages          integer NOT NULL DEFAULT 0 CHECK (pages >= 0),
    result         text NOT NULL DEFAULT '',
    bit_rate       integer,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (node, call_id)
);

CREATE TABLE mail_outbox (
    id              bigserial PRIMARY KEY,
    tenant_id       bigint REFERENCES tenants ON DELETE CASCADE,
    fax_id          bigint REFERENCES faxes ON DELETE SET NULL,
    kind            text NOT NULL CHECK (kind IN ('fax_in', 'failure_report')),
    recipient       text NOT NULL,
    report_to       text,                    -- who hears of the final failure ('' / NULL: nobody)
    subject         text NOT NULL,
    body            text NOT NULL,
    attachment_name text,
    attachment      bytea,
    state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE state = 'queued';
