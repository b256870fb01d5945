-- The options a tenant has (plan-included plus booked), as rows: the one
-- definition of "how many of option X", read whole by the call-time
-- snapshot (one inlined lookup instead of one function call per option)
-- and by dustel_option_qty for single options.
CREATE FUNCTION dustel_options(t bigint) RETURNS TABLE (option text, qty integer)
LANGUAGE sql STABLE AS $$
    SELECT o.option, sum(o.q)::integer
      FROM (SELECT po.option, po.included AS q
              FROM tenants te JOIN plan_options po ON po.plan = te.plan
             WHERE te.id = t
            UNION ALL
            SELECT tp.option, tp.quantity FROM tenant_options tp WHERE tp.tenant_id = t) o
     GROUP BY o.option
$$;

CREATE OR REPLACE FUNCTION dustel_option_qty(t bigint, opt text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT o.qty FROM dustel_options(t) o WHERE o.option = opt), 0)
$$;
