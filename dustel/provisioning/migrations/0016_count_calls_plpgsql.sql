-- depends: 0015_billing
-- The counter function of the calls triggers (0014) as PL/pgSQL instead of
-- SQL: PostgreSQL plans a non-inlined SQL function's body again on every
-- call, PL/pgSQL keeps the plan for the session.  Same statement, same
-- effect; measured on one connection, an admission's INSERT INTO calls
-- went from 0.75 to 0.38 ms (the trigger's share from 0.61 to 0.23 ms).
CREATE OR REPLACE FUNCTION dustel_count_calls(t bigint[], dir text[], route text[], flat text[], cents bigint[],
                                              free integer[], s integer[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
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
      FROM d WHERE m.tenant_id = d.t;
END $$;
