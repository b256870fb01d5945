-- Issue 13: a ring group rings its members for its ring time, then its
-- fallback: an account of the tenant or an external number (or nothing).
ALTER TABLE ring_groups ADD COLUMN fallback_account_id bigint REFERENCES sip_accounts ON DELETE SET NULL;
ALTER TABLE ring_groups ADD COLUMN fallback_e164 text CHECK (fallback_e164 ~ '^\+[1-9][0-9]{5,14}$');
ALTER TABLE ring_groups ADD CONSTRAINT ring_groups_one_fallback
    CHECK (num_nonnulls(fallback_account_id, fallback_e164) <= 1);
