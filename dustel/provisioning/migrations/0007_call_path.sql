-- Issue 15/16: failed queue offers are their own kind; a call remembers the
-- dialled number and tenant it was admitted for, so a retried request must
-- match it (a reused call id never inherits another call's decision).
ALTER TABLE queue_events DROP CONSTRAINT queue_events_kind_check;
ALTER TABLE queue_events ADD CONSTRAINT queue_events_kind_check
    CHECK (kind IN ('offered', 'answered', 'abandoned', 'timeout', 'closed', 'completed', 'offer_failed',
                    'login', 'logout', 'pause', 'unpause'));
ALTER TABLE calls ADD COLUMN callee text NOT NULL DEFAULT '';
