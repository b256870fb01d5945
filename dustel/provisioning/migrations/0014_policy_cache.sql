-- Issue 10: the two functions the admission snapshot calls per row, as
-- PL/pgSQL.  As SQL functions with sub-selects they cannot be inlined, and
-- PostgreSQL plans a non-inlined SQL function's query again on every
-- execution of the calling statement (about 0.2 ms each per decision);
-- PL/pgSQL keeps its plans for the session.  Same results.
CREATE OR REPLACE FUNCTION dustel_psap_prefix(area text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    p text;
BEGIN
    SELECT route_prefix INTO p FROM psaps WHERE area_code = area;
    RETURN coalesce(p, '0' || coalesce(area, ''));
END
$$;

CREATE OR REPLACE FUNCTION dustel_presented_number(p_tenant bigint, p_account bigint) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    n text;
BEGIN
    SELECT caller_id INTO n FROM sip_accounts WHERE id = p_account AND tenant_id = p_tenant;
    IF n IS NULL THEN
        SELECT e164 INTO n FROM numbers WHERE tenant_id = p_tenant AND account_id = p_account
           AND status IN ('active', 'porting_out') ORDER BY id LIMIT 1;
    END IF;
    IF n IS NULL THEN
        SELECT e164 INTO n FROM numbers WHERE tenant_id = p_tenant AND status IN ('active', 'porting_out')
         ORDER BY id LIMIT 1;
    END IF;
    RETURN coalesce(n, '');
END
$$;

-- Issue 10: what a decision must read under the money lock lives in the
-- money row, so locking and reading are one step: the live line and flat
-- counters (kept exact by a trigger on calls, in the same transaction as
-- every change of a call) and the version of the tenant's settings (bumped
-- by triggers on every table the policy reads per tenant).  The settings
-- themselves are cached in the policy servers, keyed by that version: a
-- change committed before a decision's lock is seen by that decision.
ALTER TABLE tenant_money
    ADD COLUMN config_version bigint NOT NULL DEFAULT 1,
    ADD COLUMN active_in integer NOT NULL DEFAULT 0 CHECK (active_in >= 0),
    ADD COLUMN active_out integer NOT NULL DEFAULT 0 CHECK (active_out >= 0),
    ADD COLUMN active_flat_de_fixed integer NOT NULL DEFAULT 0 CHECK (active_flat_de_fixed >= 0),
    ADD COLUMN active_flat_de_mobile integer NOT NULL DEFAULT 0 CHECK (active_flat_de_mobile >= 0);

-- the flats the counters know (policy: a call holds a flat only of a zone with flat channels)
ALTER TABLE calls ADD CONSTRAINT calls_flat_zone_known CHECK (flat_zone IN ('de_fixed', 'de_mobile'));

-- The one definition of what an active call holds, kept in its tenant's
-- money row by triggers on calls (in the transaction of every change of a
-- call): every inbound call an inbound line; an outbound call an outbound
-- line unless it stays inside the tenant (internal); a flat call a channel
-- of its zone; and its reservation (cents and start-credit seconds).  A
-- call that is inserted active takes them; one that stops being active
-- (settled, expired) or is deleted gives them back.  Statement-level
-- triggers with transition tables: one UPDATE per tenant and statement,
-- however many calls a batch inserts or a sweep expires.
CREATE FUNCTION dustel_count_calls(t bigint[], dir text[], route text[], flat text[], cents bigint[],
                                   free integer[], s integer[])
RETURNS void LANGUAGE sql AS $$
    WITH d AS (
        SELECT x.t,
               sum(CASE WHEN x.dir = 'in' THEN x.s ELSE 0 END) AS i,
               sum(CASE WHEN x.dir = 'out' AND x.route <> 'internal' THEN x.s ELSE 0 END) AS o,
               sum(CASE WHEN x.flat = 'de_fixed' THEN x.s ELSE 0 END) AS ff,
               sum(CASE WHEN x.flat = 'de_mobile' THEN x.s ELSE 0 END) AS fm,
               sum(x.s * x.cents) AS rc, sum(x.s * x.free) AS rf
          FROM unnest(t, dir, route, flat, cents, free, s) AS x(t, dir, route, flat, cents, free, s) GROUP BY x.t)
    UPDATE tenant_money m SET active_in = m.active_in + d.i, active_out = m.active_out + d.o,
                              active_flat_de_fixed = m.active_flat_de_fixed + d.ff,
                              active_flat_de_mobile = m.active_flat_de_mobile + d.fm,
                              reserved_cents = m.reserved_cents + d.rc, reserved_free = m.reserved_free + d.rf
      FROM d WHERE m.tenant_id = d.t
$$;
-- INSERT (+1) and DELETE (-1): the rows are the transition table dustel_calls_delta
CREATE FUNCTION dustel_calls_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dustel_count_calls(array_agg(tenant_id), array_agg(direction), array_agg(route), array_agg(flat_zone),
                               array_agg(reserved_cents), array_agg(reserved_free), array_agg(TG_ARGV[0]::integer))
       FROM dustel_calls_delta WHERE state = 'active';
    RETURN NULL;
END $$;
CREATE FUNCTION dustel_calls_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dustel_count_calls(array_agg(x.tenant_id), array_agg(x.direction), array_agg(x.route),
                               array_agg(x.flat_zone), array_agg(x.reserved_cents), array_agg(x.reserved_free),
                               array_agg(x.s))
       FROM (SELECT tenant_id, direction, route, flat_zone, reserved_cents, reserved_free, 1 AS s
               FROM dustel_new_calls WHERE state = 'active'
             UNION ALL
             SELECT tenant_id, direction, route, flat_zone, reserved_cents, reserved_free, -1
               FROM dustel_old_calls WHERE state = 'active') x;
    RETURN NULL;
END $$;
CREATE TRIGGER calls_count_insert AFTER INSERT ON calls REFERENCING NEW TABLE AS dustel_calls_delta
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_calls_count('1');
CREATE TRIGGER calls_count_delete AFTER DELETE ON calls REFERENCING OLD TABLE AS dustel_calls_delta
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_calls_count('-1');
CREATE TRIGGER calls_count_update AFTER UPDATE ON calls
    REFERENCING OLD TABLE AS dustel_old_calls NEW TABLE AS dustel_new_calls
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_calls_count_update();

-- the counters of the calls active now (their reservations are in the row already)
UPDATE tenant_money m SET
    active_in = c.i, active_out = c.o, active_flat_de_fixed = c.ff, active_flat_de_mobile = c.fm
  FROM (SELECT tenant_id, count(*) FILTER (WHERE direction = 'in') AS i,
               count(*) FILTER (WHERE direction = 'out' AND route <> 'internal') AS o,
               count(*) FILTER (WHERE flat_zone = 'de_fixed') AS ff,
               count(*) FILTER (WHERE flat_zone = 'de_mobile') AS fm
          FROM calls WHERE state = 'active' GROUP BY tenant_id) c
 WHERE m.tenant_id = c.tenant_id;

-- A tenant's settings changed: the cached copies are stale from this commit on.
CREATE FUNCTION dustel_config_bump(t bigint) RETURNS void LANGUAGE sql AS $$
    UPDATE tenant_money SET config_version = config_version + 1 WHERE tenant_id = t
$$;
CREATE FUNCTION dustel_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        PERFORM dustel_config_bump(NEW.id);
    ELSIF TG_TABLE_NAME = 'screening' THEN
        IF TG_OP <> 'INSERT' THEN
            PERFORM dustel_config_bump((SELECT tenant_id FROM sip_accounts WHERE id = OLD.account_id));
        END IF;
        IF TG_OP <> 'DELETE' THEN
            PERFORM dustel_config_bump((SELECT tenant_id FROM sip_accounts WHERE id = NEW.account_id));
        END IF;
    ELSE
        IF TG_OP <> 'INSERT' THEN PERFORM dustel_config_bump(OLD.tenant_id); END IF;
        IF TG_OP <> 'DELETE' THEN PERFORM dustel_config_bump(NEW.tenant_id); END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_config AFTER UPDATE ON tenants FOR EACH ROW EXECUTE FUNCTION dustel_config_changed();
CREATE TRIGGER tenant_options_config AFTER INSERT OR UPDATE OR DELETE ON tenant_options
    FOR EACH ROW EXECUTE FUNCTION dustel_config_changed();
CREATE TRIGGER sip_accounts_config AFTER INSERT OR UPDATE OR DELETE ON sip_accounts
    FOR EACH ROW EXECUTE FUNCTION dustel_config_changed();
CREATE TRIGGER numbers_config AFTER INSERT OR UPDATE OR DELETE ON numbers
    FOR EACH ROW EXECUTE FUNCTION dustel_config_changed();
CREATE TRIGGER screening_config AFTER INSERT OR UPDATE OR DELETE ON screening
    FOR EACH ROW EXECUTE FUNCTION dustel_config_changed();

-- What every tenant shares (plans and their options, zone presets, PSAPs)
-- changes the global version the tariff already has.
CREATE TRIGGER plans_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON plans
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_tariff_changed();
CREATE TRIGGER plan_options_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON plan_options
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_tariff_changed();
CREATE TRIGGER zone_presets_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON zone_presets
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_tariff_changed();
CREATE TRIGGER psaps_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON psaps
    FOR EACH STATEMENT EXECUTE FUNCTION dustel_tariff_changed();
