-- Issue 15/16: failed queue offers are their own kind; a call remembers the
-- dialled number and tenant it was admitted for, so a retried request must
-- match it (a reused call id never inherits another call's decision).
ALTER TABLE queue_events DROP CONSTRAINT queue_events_kind_check;
ALTER TABLE queue_events ADD CONSTRAINT queue_events_kind_check
    CHECK (kind IN ('offered', 'answered', 'abandoned', 'timeout', 'closed', 'completed', 'offer_failed',
                    'login', 'logout', 'pause', 'unpause'));
ALTER TABLE calls ADD COLUMN callee text NOT NULL DEFAULT '';

-- Issue 16.6: PIN failures are counted per agent *and source* (the phone
-- account, or the hotline with the caller number it claims), so a spoofed
-- caller ID can lock at most its own way in; every attempt is logged and
-- attempts per source are rate-limited.
CREATE TABLE agent_pin_locks (
    agent_id     bigint NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    source       text NOT NULL,
    failed       integer NOT NULL DEFAULT 0,
    locks        integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    PRIMARY KEY (agent_id, source)
);
CREATE TABLE pin_attempts (
    id        bigserial PRIMARY KEY,
    tenant_id bigint NOT NULL,
    agent_id  bigint,
    source    text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    ok        boolean NOT NULL
);
CREATE INDEX pin_attempts_source_at ON pin_attempts (source, at);

-- Issue 15.6: the policy servers cache the tariff; every change of rates or
-- zone prefixes bumps this version in its own transaction, and admission
-- compares it in the admission transaction: the next call is rated anew.
CREATE TABLE tariff_version (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO tariff_version VALUES (true, 1);
CREATE FUNCTION dustel_tariff_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tariff_version SET version = version + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER rates_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rates
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_tariff_changed();
CREATE TRIGGER zone_prefixes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON zone_prefixes
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_tariff_changed();

-- Issue 15.16: the number an account presents when none is configured: the
-- tenant's number routed to the account, else the tenant's first number —
-- never what the phone sends (that is CLIP no screening, an option).
CREATE FUNCTION dustel_presented_number(p_tenant bigint, p_account bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT caller_id FROM sip_accounts WHERE id = p_account AND tenant_id = p_tenant),
        (SELECT e164 FROM numbers WHERE tenant_id = p_tenant AND account_id = p_account
            AND status IN ('active', 'porting_out') ORDER BY id LIMIT 1),
        (SELECT e164 FROM numbers WHERE tenant_id = p_tenant AND status IN ('active', 'porting_out')
          ORDER BY id LIMIT 1),
        '')
$$;
CREATE INDEX IF NOT EXISTS numbers_account ON numbers (account_id) WHERE account_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS numbers_tenant ON numbers (tenant_id, id);

-- Issue 15.17: German service ranges in zones of their own (they were
-- de_fixed, covered by flats and start credit), national short codes too.
INSERT INTO zones VALUES
 ('de_freephone',  'Germany, 0800 freephone and 116xxx harmonised services'),
 ('de_public',     'Germany, 115 public administration'),
 ('de_callbycall', 'Germany, 010xx call-by-call carrier selection'),
 ('de_innovative', 'Germany, 012 innovative services');
UPDATE zone_prefixes SET zone = 'de_public' WHERE prefix = '49115';
UPDATE zone_prefixes SET zone = 'de_freephone' WHERE prefix = '49116';
INSERT INTO zone_prefixes VALUES ('49800', 'de_freephone'), ('4910', 'de_callbycall'), ('4912', 'de_innovative'),
                                 ('49181', 'de_service')
    ON CONFLICT (prefix) DO UPDATE SET zone = EXCLUDED.zone;
UPDATE zone_presets SET zones = zones || '{de_freephone,de_public}' WHERE code <> 'none';

-- Issue 15.14: mod_callcenter has no "max callers"; dustel supplies it on
-- FreeSWITCH: a caller is a row here while it waits in a queue (from the
-- callcenter application until it ends); rows older than the queue's max
-- wait do not count (a server that died cannot leave a queue full).
CREATE TABLE queue_waiting (
    node      text NOT NULL,
    call_id   text NOT NULL,
    tenant_id bigint NOT NULL,
    queue_id  bigint NOT NULL,
    since     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, call_id),
    FOREIGN KEY (tenant_id, queue_id) REFERENCES queues (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX queue_waiting_queue ON queue_waiting (queue_id, since);
