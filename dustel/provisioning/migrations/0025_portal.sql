-- depends: 0021_plan_periods
-- Issue 28 (F-13), the Kundencenter: customer users with roles, their
-- sessions, failed logins (rate limits and lockout), the tenant's portal
-- settings, and the notification the supervisors' live queue view waits on.

-- A customer user belongs to one tenant; an agent user is one of the
-- tenant's queue agents (composite keys: never another tenant's).
CREATE TABLE portal_users (
    id            bigserial PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    login         text NOT NULL UNIQUE CHECK (login ~ '^[a-z0-9][a-z0-9._@-]{2,63}$'),
    role          text NOT NULL CHECK (role IN ('admin', 'supervisor', 'agent')),
    agent_id      bigint,
    password_hash text NOT NULL,                  -- argon2id, never the password
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id) ON DELETE CASCADE,
    CHECK ((role = 'agent') = (agent_id IS NOT NULL))
);

-- A session: the browser (cookie) or the API client (bearer) holds a random
-- token; the database holds only its keyed hash (HMAC with portal_secret),
-- so a copy of this table opens no session.  Idle and absolute expiry.
CREATE TABLE portal_sessions (
    token_hash    bytea PRIMARY KEY,
    user_id       bigint NOT NULL,
    tenant_id     bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    seen_at       timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,           -- idle expiry, moved on by use
    ends_at       timestamptz NOT NULL,           -- absolute expiry
    peer          text NOT NULL DEFAULT '',
    FOREIGN KEY (tenant_id, user_id) REFERENCES portal_users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX portal_sessions_user ON portal_sessions (user_id);
CREATE INDEX portal_sessions_expires ON portal_sessions (expires_at);

-- Failed logins, counted per (login, client address), per login and per
-- client address over a window (portal/auth.py decides under an advisory lock).
CREATE TABLE portal_login_failures (
    id     bigserial PRIMARY KEY,
    login  text NOT NULL,
    peer   text NOT NULL,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX portal_login_failures_login ON portal_login_failures (login, at);
CREATE INDEX portal_login_failures_peer ON portal_login_failures (peer, at);

-- The tenant's choices in the Kundencenter: calls itemised with the last
-- three digits masked unless the customer chose full numbers.
CREATE TABLE portal_settings (
    tenant_id         bigint PRIMARY KEY REFERENCES tenants ON DELETE CASCADE,
    show_full_numbers boolean NOT NULL DEFAULT false
);

-- The live queue view (portal/live.py) learns of every queue happening the
-- controller (or a policy shell, or a star code) stores from one
-- notification per tenant and statement: LISTEN dustel_queue, payload the
-- tenant id.  No engine is polled; a statement of many rows (an import, a
-- benchmark) notifies each of its tenants once.
CREATE FUNCTION dustel_queue_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dustel_queue', t::text) FROM (SELECT DISTINCT tenant_id AS t FROM dustel_changed) x;
    RETURN NULL;
END $$;
CREATE TRIGGER queue_events_notify AFTER INSERT ON queue_events REFERENCING NEW TABLE AS dustel_changed
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_queue_notify();
CREATE TRIGGER agent_logins_notify_insert AFTER INSERT ON agent_logins REFERENCING NEW TABLE AS dustel_changed
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_queue_notify();
CREATE TRIGGER agent_logins_notify_update AFTER UPDATE ON agent_logins REFERENCING NEW TABLE AS dustel_changed
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_queue_notify();
CREATE TRIGGER agent_logins_notify_delete AFTER DELETE ON agent_logins REFERENCING OLD TABLE AS dustel_changed
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_queue_notify();
