-- depends: 0016_count_calls_plpgsql
-- transactional: false
-- The legs dustel placed for a call are the calls named <call id>:leg,
-- <call id>:leg2, …  They were found with LIKE '<call id>:leg%', which a
-- generic plan (the policy connections') cannot turn into an index range:
-- every hangup of a forwarded call read all calls its node ever stored.
-- The flows compare bytewise instead (~>=~ / ~<~, text_pattern_ops: a
-- prefix is a range whatever the database's collation), on this index.
-- Built without blocking admissions (CONCURRENTLY: outside a transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS calls_legs ON calls (node, call_id text_pattern_ops);
