-- Issue 14: how often a fax job is tried and how long it waits between
-- attempts come from the settings (fax_max_attempts, fax_retry_seconds) and
-- are stored with the job when it is queued: the policy servers that report
-- an attempt's result apply the rule the job was queued with.
ALTER TABLE fax_jobs
    ADD COLUMN max_attempts  integer NOT NULL DEFAULT 4 CHECK (max_attempts BETWEEN 1 AND 10),
    ADD COLUMN retry_seconds integer NOT NULL DEFAULT 300 CHECK (retry_seconds BETWEEN 30 AND 86400);
