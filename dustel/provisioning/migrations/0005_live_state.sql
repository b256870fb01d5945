-- Live state the controller keeps from the engines' events (F-11) and the
-- call detail records (F-09).  One row per channel / call leg, keyed by
-- (engine node, engine call id), so a replayed event never writes twice.

CREATE TABLE live_channels (
    node         text NOT NULL,
    call_id      text NOT NULL,
    engine       text NOT NULL CHECK (engine IN ('freeswitch', 'asterisk')),
    tenant_id    bigint REFERENCES tenants ON DELETE SET NULL,
    account      text NOT NULL DEFAULT '',
    direction    text NOT NULL CHECK (direction IN ('in', 'out', 'leg')),
    caller       text NOT NULL DEFAULT '',
    callee       text NOT NULL DEFAULT '',
    channel      text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    answered_at  timestamptz,
    PRIMARY KEY (node, call_id)
);
CREATE INDEX live_channels_tenant ON live_channels (tenant_id, direction);

CREATE TABLE cdrs (
    node         text NOT NULL,
    call_id      text NOT NULL,
    engine       text NOT NULL,
    tenant_id    bigint REFERENCES tenants ON DELETE SET NULL,
    account      text NOT NULL DEFAULT '',
    direction    text NOT NULL,
    caller       text NOT NULL DEFAULT '',
    callee       text NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL,
    answered_at  timestamptz,
    ended_at     timestamptz NOT NULL,
    billsec      integer NOT NULL DEFAULT 0 CHECK (billsec >= 0),
    hangup_cause text NOT NULL DEFAULT '',
    PRIMARY KEY (node, call_id)
);
CREATE INDEX cdrs_tenant_time ON cdrs (tenant_id, started_at);

CREATE TABLE registrations (
    node          text NOT NULL,
    username      text NOT NULL,
    contact       text NOT NULL,
    tenant_id     bigint REFERENCES tenants ON DELETE CASCADE,
    source        text NOT NULL DEFAULT '',
    user_agent    text NOT NULL DEFAULT '',
    expires_at    timestamptz,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, username, contact)
);
CREATE INDEX registrations_user ON registrations (username);

-- Who is online (forwarding "when offline", group calls) and how many calls
-- each tenant has up per direction, as the engines report them.
CREATE VIEW online_accounts AS
    SELECT DISTINCT r.tenant_id, r.username FROM registrations r
     WHERE r.expires_at IS NULL OR r.expires_at > now();

CREATE VIEW live_calls_per_tenant AS
    SELECT tenant_id, direction, count(*) AS calls FROM live_channels
     WHERE tenant_id IS NOT NULL AND direction IN ('in', 'out') GROUP BY tenant_id, direction;
