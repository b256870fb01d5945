-- depends: 0018_mailgw_hostile
-- Issue 26 item 19: an "external" target that is one of the tenant's own
-- numbers goes out through the carrier and comes back in — to the same
-- diversion, again and again.  Refused where it is configured (forwarding
-- and group call targets, a ring group's fallback, a closed queue's
-- target), and the other way round: a number cannot be added to a tenant
-- while one of its diversions sends calls to it as an external number.
-- (A ported-out number is no longer the tenant's.)

-- the tenant's number row (single or block) that holds x, described, or NULL
CREATE FUNCTION dustel_own_number(t bigint, x text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN n.block_size IS NULL THEN n.e164 ELSE format('%s (block %s of %s)', x, n.e164, n.block_size) END
      FROM numbers n
     WHERE n.tenant_id = t AND n.status <> 'ported_out'
       AND (n.e164 = x
            OR (n.block_size IS NOT NULL
                AND starts_with(x, n.e164)
                AND length(x) = length(n.e164) + dustel_ddi_digits(n.block_size)
                AND substr(x, length(n.e164) + 1)::integer < n.block_size))
     LIMIT 1
$$;

CREATE FUNCTION dustel_refuse_own_number(t bigint, x text, field text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    own text := CASE WHEN x LIKE '+%' THEN dustel_own_number(t, x) END;
BEGIN
    IF own IS NOT NULL THEN
        PERFORM dustel_refuse(format('%s: %s is a number of this tenant; name the SIP account (or queue) it '
                                     'rings instead of sending the call out through the carrier and back in',
                                     field, own));
    END IF;
END $$;

CREATE OR REPLACE FUNCTION dustel_diversion_targets_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tgt text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('dustel.diversions'), NEW.tenant_id::integer);
    IF NEW.target_account_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM diversions WHERE account_id = NEW.target_account_id) THEN
        SELECT username INTO tgt FROM sip_accounts WHERE id = NEW.target_account_id;
        PERFORM dustel_refuse(format('targets: %s has a forwarding or group call of its own; no forwarding behind forwarding',
                                     tgt));
    END IF;
    IF NEW.external_e164 IS NOT NULL
       AND (SELECT count(*) FROM diversion_targets WHERE account_id = NEW.account_id
               AND external_e164 IS NOT NULL AND position <> NEW.position) >= 2 THEN
        PERFORM dustel_refuse('targets: at most 2 external numbers (F-05)');
    END IF;
    PERFORM dustel_refuse_own_number(NEW.tenant_id, NEW.external_e164, 'targets');
    RETURN NEW;
END $$;

CREATE FUNCTION dustel_ring_groups_own_number() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dustel_refuse_own_number(NEW.tenant_id, NEW.fallback_e164, 'fallback');
    RETURN NEW;
END $$;
CREATE TRIGGER ring_groups_own_number BEFORE INSERT OR UPDATE ON ring_groups
    FOR EACH ROW EXECUTE FUNCTION dustel_ring_groups_own_number();

CREATE FUNCTION dustel_queues_own_number() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dustel_refuse_own_number(NEW.tenant_id, NEW.closed_target, 'closed_target');
    RETURN NEW;
END $$;
CREATE TRIGGER queues_own_number BEFORE INSERT OR UPDATE ON queues
    FOR EACH ROW EXECUTE FUNCTION dustel_queues_own_number();

-- a number (or block) that would make an existing external target the tenant's own
CREATE FUNCTION dustel_numbers_not_a_target() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    hit text;
BEGIN
    IF NEW.status = 'ported_out' THEN
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('dustel.diversions'), NEW.tenant_id::integer);
    SELECT x INTO hit FROM (
        SELECT t.external_e164 AS x FROM diversion_targets t WHERE t.tenant_id = NEW.tenant_id
        UNION ALL SELECT g.fallback_e164 FROM ring_groups g WHERE g.tenant_id = NEW.tenant_id
        UNION ALL SELECT q.closed_target FROM queues q WHERE q.tenant_id = NEW.tenant_id) targets
     WHERE x = NEW.e164
        OR (NEW.block_size IS NOT NULL
            AND starts_with(x, NEW.e164)
            AND length(x) = length(NEW.e164) + dustel_ddi_digits(NEW.block_size)
            AND substr(x, length(NEW.e164) + 1)::integer < NEW.block_size)
     LIMIT 1;
    IF hit IS NOT NULL THEN
        PERFORM dustel_refuse(format('number: %s is an external forwarding, group call, fallback or closed-queue '
                                     'target of this tenant; change that target first (it would loop through '
                                     'the carrier)', hit));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER numbers_not_a_target BEFORE INSERT OR UPDATE OF e164, block_size, tenant_id, status ON numbers
    FOR EACH ROW EXECUTE FUNCTION dustel_numbers_not_a_target();
