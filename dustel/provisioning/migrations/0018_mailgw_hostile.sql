-- depends: 0017_calls_legs_index
-- Issue 26: the e-mail to fax gateway against a hostile sender.
--
-- Wrong PINs are counted per (sender, client address) — a stranger who
-- writes a customer's address into MAIL FROM from elsewhere locks out
-- himself, not the customer — and per tenant (a cap over all senders);
-- wrong logins of authenticated submission (SMTP AUTH) likewise, per
-- (login, client address).
ALTER TABLE mailgw_pin_failures
    ADD COLUMN peer      text NOT NULL DEFAULT '',
    ADD COLUMN tenant_id bigint REFERENCES tenants ON DELETE CASCADE,
    ADD COLUMN kind      text NOT NULL DEFAULT 'pin' CHECK (kind IN ('pin', 'auth'));
DROP INDEX mailgw_pin_failures_sender;
CREATE INDEX mailgw_pin_failures_sender ON mailgw_pin_failures (kind, sender, peer, at);
CREATE INDEX mailgw_pin_failures_tenant ON mailgw_pin_failures (tenant_id, at) WHERE tenant_id IS NOT NULL;

-- A refused mail gets one report at most, and an address a few an hour:
-- refusal reports are their own kind so they can be counted.
ALTER TABLE mail_outbox DROP CONSTRAINT mail_outbox_kind_check;
ALTER TABLE mail_outbox ADD CONSTRAINT mail_outbox_kind_check
    CHECK (kind IN ('fax_in', 'failure_report', 'fax_report', 'refusal_report'));
CREATE INDEX mail_outbox_refusals ON mail_outbox (lower(recipient), created_at) WHERE kind = 'refusal_report';

-- A mail's recipients are queued in one transaction, and each job remembers
-- the mail's Message-ID: a sender's server that repeats a mail whose 250 it
-- never read does not get the fax sent (and charged) twice.
ALTER TABLE fax_jobs ADD COLUMN mail_message_id text;
CREATE UNIQUE INDEX fax_jobs_mail ON fax_jobs (tenant_id, mail_message_id, to_number)
    WHERE mail_message_id IS NOT NULL;

-- Authenticated submission (SMTP AUTH over STARTTLS): a fax box may have a
-- password of its own (argon2), the login being <tenant id>/<box name>.
ALTER TABLE faxboxes ADD COLUMN smtp_password_hash text;
