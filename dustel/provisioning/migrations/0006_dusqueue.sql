-- DUSqueue (F-06): who is logged in where, PIN lockout, and the raw queue
-- events every statistic is computed from.

ALTER TABLE agents ADD COLUMN failed_pins integer NOT NULL DEFAULT 0,
                   ADD COLUMN locked_until timestamptz;

CREATE TABLE agent_logins (
    queue_id     bigint NOT NULL,
    agent_id     bigint NOT NULL,
    tenant_id    bigint NOT NULL,
    contact      text NOT NULL,                 -- the phone (SIP account) or number the agent takes calls on
    since        timestamptz NOT NULL DEFAULT now(),
    paused_since timestamptz,
    PRIMARY KEY (queue_id, agent_id),
    FOREIGN KEY (tenant_id, queue_id) REFERENCES queues (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id) ON DELETE CASCADE
);

-- One row per thing that happened in a queue, normalised from both engines
-- (and from the star codes for agent sessions).  Times in ms.  source_ref
-- makes a replayed engine event a no-op.
CREATE TABLE queue_events (
    id         bigserial PRIMARY KEY,
    tenant_id  bigint NOT NULL,
    queue_id   bigint NOT NULL,
    at         timestamptz NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('offered', 'answered', 'abandoned', 'timeout', 'closed',
                                             'completed', 'login', 'logout', 'pause', 'unpause')),
    call_id    text NOT NULL DEFAULT '',
    agent_id   bigint,
    wait_ms    bigint CHECK (wait_ms >= 0),
    talk_ms    bigint CHECK (talk_ms >= 0),
    source_ref text UNIQUE,
    FOREIGN KEY (tenant_id, queue_id) REFERENCES queues (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX queue_events_queue_at ON queue_events (queue_id, at);
