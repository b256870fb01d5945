-- Base schema: plans and options (SPEC F-01), tenants and addresses,
-- SIP accounts (F-03), numbers and porting (F-02), forwarding / group call
-- (F-05), call-time limits and lists (F-04 data), queues and agents (F-06
-- data), fax boxes (F-08 data).
--
-- Rules live here where the database can hold them; triggers raise
-- SQLSTATE DU001 with the message "<field>: <rule>", which the CLI prints.

-- ---------------------------------------------------------------- helpers
CREATE FUNCTION dustel_refuse(msg text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'DU001', MESSAGE = msg;
END $$;

-- German geographic number: +49 then an area code starting 2-9, except the
-- non-geographic ranges (032 national, 0700 personal, 0800 free, 0900
-- premium, 0180/0137/0138 service, 015-017 mobile, 018x, 019x).
CREATE FUNCTION dustel_is_geographic(e164 text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT e164 ~ '^\+49[2-9]'
       AND e164 !~ '^\+49(32|700|800|900|1)'
$$;

-- ---------------------------------------------------------------- plans
CREATE TABLE plans (
    code                    text PRIMARY KEY,
    name                    text NOT NULL,
    payment                 text NOT NULL CHECK (payment IN ('prepaid', 'postpaid')),
    prices_net              boolean NOT NULL,   -- true: + VAT; false: prices are gross
    base_fee_cents          integer NOT NULL CHECK (base_fee_cents >= 0),
    min_term_months         integer NOT NULL CHECK (min_term_months >= 0),
    lines_in                integer NOT NULL,
    lines_out               integer NOT NULL,
    accounts_included       integer NOT NULL,
    accounts_max            integer,            -- NULL: included + purchased extras
    numbers_max             integer,            -- NULL: no cap (starter) / quota (business)
    numbers_included        integer NOT NULL DEFAULT 0,
    new_number_once_cents   integer NOT NULL DEFAULT 0,
    new_number_yearly_cents integer NOT NULL DEFAULT 0,
    number_monthly_cents    integer NOT NULL DEFAULT 0,
    number_monthly_large_cents integer NOT NULL DEFAULT 0,
    number_large_block_over integer,            -- blocks larger than this use the large price
    porting_fee_yearly_cents integer NOT NULL DEFAULT 0,
    porting_fee_since       date,               -- tariffs created before are exempt
    porting_fee_covers      integer,            -- ported numbers one fee covers
    porting_free_max        integer,            -- NULL: no cap on ported numbers
    start_credit_seconds    integer NOT NULL DEFAULT 0,  -- free minutes to DE fixed
    own_hold_music          boolean NOT NULL,
    timed_forwarding        boolean NOT NULL,
    vat_percent             integer NOT NULL DEFAULT 19
);

CREATE TABLE plan_customer_types (
    plan          text NOT NULL REFERENCES plans,
    customer_type text NOT NULL CHECK (customer_type IN ('private', 'business', 'public_body')),
    PRIMARY KEY (plan, customer_type)
);

-- Options a plan offers.  quantity bought is on tenant_options; "included"
-- units come free with the plan and are not stored per tenant.
CREATE TABLE plan_options (
    plan               text NOT NULL REFERENCES plans,
    option             text NOT NULL,
    description        text NOT NULL,
    price_cents        integer NOT NULL CHECK (price_cents >= 0),  -- per unit and month
    included           integer NOT NULL DEFAULT 0,
    max_purchase       integer,              -- NULL: unlimited
    requires_agreement boolean NOT NULL DEFAULT false,
    PRIMARY KEY (plan, option)
);

INSERT INTO plans (code, name, payment, prices_net, base_fee_cents, min_term_months,
                   lines_in, lines_out, accounts_included, accounts_max,
                   numbers_max, numbers_included,
                   new_number_once_cents, new_number_yearly_cents,
                   number_monthly_cents, number_monthly_large_cents, number_large_block_over,
                   porting_fee_yearly_cents, porting_fee_since, porting_fee_covers, porting_free_max,
                   start_credit_seconds, own_hold_music, timed_forwarding) VALUES
 ('starter', 'starter', 'prepaid', false, 0, 0, 2, 2, 5, 5,
  NULL, 0, 990, 490, 0, 0, NULL,
  500, '2023-07-01', 10, NULL,
  1800, false, false),
 ('complete', 'complete', 'postpaid', false, 790, 12, 2, 2, 10, 10,
  10, 10, 0, 0, 0, 0, NULL,
  0, NULL, NULL, 10,
  0, false, false),
 ('business_flex', 'business flex', 'postpaid', true, 720, 1, 2, 2, 2, NULL,
  NULL, 0, 0, 0, 42, 36, 50,
  0, NULL, NULL, NULL,
  0, true, true);

INSERT INTO plan_customer_types VALUES
 ('starter', 'private'), ('starter', 'business'), ('starter', 'public_body'),
 ('complete', 'private'),
 ('business_flex', 'business'), ('business_flex', 'public_body');

INSERT INTO plan_options (plan, option, description, price_cents, included, max_purchase, requires_agreement) VALUES
 ('starter',       'per_minute_billing', 'billing per started minute (60/60) instead of per second', 0, 0, 1, false),
 ('complete',      'flat_de_fixed',      'flatrate German landlines, one concurrent call each', 490, 1, 1, false),
 ('complete',      'flat_de_mobile',     'flatrate German mobile networks, one concurrent call', 690, 0, 1, false),
 ('business_flex', 'flat_de_fixed',      'flatrate German landlines, one concurrent call each', 832, 0, NULL, false),
 ('business_flex', 'flat_de_mobile',     'flatrate German mobile networks, one concurrent call each', 1672, 0, NULL, false),
 ('business_flex', 'extra_line',         'one more concurrent call in and out', 84, 0, NULL, false),
 ('business_flex', 'extra_account',      'one more SIP account', 42, 0, NULL, false),
 ('business_flex', 'acd',                'DUSqueue call-centre queues (ACD)', 832, 0, 1, false),
 ('business_flex', 'clip_no_screening',  'present any caller ID (CLIP no screening)', 420, 0, 1, true);

-- ---------------------------------------------------------------- zones
CREATE TABLE zones (
    code        text PRIMARY KEY,
    description text NOT NULL
);
INSERT INTO zones VALUES
 ('de_fixed',    'Germany, landlines'),
 ('de_mobile',   'Germany, mobile networks'),
 ('de_masscall', 'Germany, 0137 mass-call numbers'),
 ('de_service',  'Germany, 0180 service numbers'),
 ('de_premium',  'Germany, 0900 premium-rate numbers'),
 ('de_special',  'Germany, other special ranges (0118 directory, 0700, 032)'),
 ('eu_fixed',    'Europe, landlines'),
 ('eu_mobile',   'Europe, mobile networks'),
 ('world',       'rest of the world'),
 ('satellite',   'satellite and other high-cost networks');

CREATE TABLE zone_presets (
    code        text PRIMARY KEY,
    description text NOT NULL,
    zones       text[] NOT NULL
);
INSERT INTO zone_presets VALUES
 ('none',            'emergency calls only',                         '{}'),
 ('germany',         'Germany only',                                 '{de_fixed,de_mobile,de_masscall}'),
 ('germany_no_0137', 'Germany without 0137 (mass-call) numbers',     '{de_fixed,de_mobile}'),
 ('europe_fixed',    'Germany and European landlines',               '{de_fixed,de_mobile,de_masscall,eu_fixed}'),
 ('europe',          'Germany and European landlines and mobile',    '{de_fixed,de_mobile,de_masscall,eu_fixed,eu_mobile}'),
 ('world',           'the world (without premium and satellite)',    '{de_fixed,de_mobile,de_masscall,eu_fixed,eu_mobile,world}');

-- ---------------------------------------------------------------- tenants
CREATE TABLE tenants (
    id                  bigserial PRIMARY KEY,
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    customer_type       text NOT NULL,
    plan                text NOT NULL REFERENCES plans,
    sip_domain          text NOT NULL UNIQUE
                        CHECK (sip_domain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$'),
    email               text CHECK (email ~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$'),
    timezone            text NOT NULL DEFAULT 'Europe/Berlin',
    created_on          date NOT NULL DEFAULT current_date,
    clip_agreement_on   date,       -- signed CLIP-no-screening agreement filed on
    number_quota        integer CHECK (number_quota IN (10, 20, 30, 50, 70, 100, 200, 300, 500, 1000)),
    monthly_credit_limit_cents bigint CHECK (monthly_credit_limit_cents >= 0),
    max_call_seconds    integer NOT NULL DEFAULT 14400 CHECK (max_call_seconds BETWEEN 1 AND 86400),
    CONSTRAINT tenants_plan_customer_type_fkey FOREIGN KEY (plan, customer_type)
        REFERENCES plan_customer_types (plan, customer_type),
    UNIQUE (id, plan)
);

CREATE TABLE tenant_options (
    tenant_id bigint NOT NULL,
    plan      text NOT NULL,
    option    text NOT NULL,
    quantity  integer NOT NULL CHECK (quantity >= 1),
    PRIMARY KEY (tenant_id, option),
    CONSTRAINT tenant_options_tenant_id_plan_fkey FOREIGN KEY (tenant_id, plan)
        REFERENCES tenants (id, plan) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT tenant_options_plan_option_fkey FOREIGN KEY (plan, option)
        REFERENCES plan_options (plan, option)
);

CREATE TABLE addresses (
    id        bigserial PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    kind      text NOT NULL CHECK (kind IN ('seat', 'residence', 'branch', 'second_residence')),
    street    text NOT NULL CHECK (length(street) BETWEEN 1 AND 100),
    postcode  text NOT NULL CHECK (postcode ~ '^[0-9]{5}$'),
    city      text NOT NULL CHECK (length(city) BETWEEN 1 AND 60),
    area_code text NOT NULL CHECK (area_code ~ '^[2-9][0-9]{1,4}$'),  -- without the leading 0
    UNIQUE (tenant_id, kind, street, postcode)
);

-- effective quantity of an option: included with the plan + purchased
CREATE FUNCTION dustel_option_qty(t bigint, opt text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT po.included FROM tenants te
                       JOIN plan_options po ON po.plan = te.plan AND po.option = opt
                      WHERE te.id = t), 0)
         + coalesce((SELECT quantity FROM tenant_options WHERE tenant_id = t AND option = opt), 0)
$$;

-- ---------------------------------------------------------------- accounts
CREATE SEQUENCE sip_username_seq MINVALUE 100001 MAXVALUE 999999 NO CYCLE;

CREATE TABLE sip_accounts (
    id                 bigserial PRIMARY KEY,
    tenant_id          bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    username           text NOT NULL UNIQUE CHECK (username ~ '^000387[0-9]{6}$'),
    ha1                text NOT NULL CHECK (ha1 ~ '^[0-9a-f]{32}$'),
    display_name       text NOT NULL DEFAULT '' CHECK (length(display_name) <= 64),
    tls_mode           text NOT NULL DEFAULT 'off' CHECK (tls_mode IN ('off', 'tls_srtp', 'tls_only')),
    t38                text NOT NULL DEFAULT 'off' CHECK (t38 IN ('off', 'enable', 'passthrough')),
    allowed_nets       cidr[] NOT NULL DEFAULT '{}',
    caller_id          text CHECK (caller_id ~ '^\+[1-9][0-9]{5,14}$'),
    location_area_code text CHECK (location_area_code ~ '^[2-9][0-9]{1,4}$'),
    max_call_seconds   integer CHECK (max_call_seconds BETWEEN 1 AND 86400),
    zone_preset        text NOT NULL DEFAULT 'germany' REFERENCES zone_presets,
    extra_zones        text[] NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);

-- ---------------------------------------------------------------- targets
CREATE TABLE faxboxes (
    id        bigserial PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name      text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    email     text NOT NULL CHECK (email ~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$'),
    pin_hash  text,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE ring_groups (
    id        bigserial PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name      text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    ring_seconds integer NOT NULL DEFAULT 30 CHECK (ring_seconds BETWEEN 5 AND 300),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);
CREATE TABLE ring_group_members (
    group_id   bigint NOT NULL,
    tenant_id  bigint NOT NULL,
    account_id bigint NOT NULL,
    PRIMARY KEY (group_id, account_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES ring_groups (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, account_id) REFERENCES sip_accounts (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE queues (
    id                    bigserial PRIMARY KEY,
    tenant_id             bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name                  text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    code                  text NOT NULL CHECK (code ~ '^[0-9]{1,6}$'),  -- dialed after *51
    strategy              text NOT NULL DEFAULT 'ring_all'
                          CHECK (strategy IN ('ring_all', 'longest_idle', 'round_robin', 'fewest_calls', 'random')),
    max_wait_seconds      integer NOT NULL DEFAULT 300 CHECK (max_wait_seconds BETWEEN 10 AND 7200),
    max_callers           integer NOT NULL DEFAULT 10 CHECK (max_callers BETWEEN 1 AND 1000),
    wrapup_seconds        integer NOT NULL DEFAULT 10 CHECK (wrapup_seconds BETWEEN 0 AND 600),
    service_level_seconds integer NOT NULL DEFAULT 20 CHECK (service_level_seconds BETWEEN 1 AND 600),
    moh_class             text NOT NULL DEFAULT 'default' CHECK (moh_class ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    announce              text CHECK (announce ~ '^[a-z0-9][a-z0-9_/-]{0,79}$'),
    closed_announce       text CHECK (closed_announce ~ '^[a-z0-9][a-z0-9_/-]{0,79}$'),
    opening_hours         jsonb,   -- NULL: always open
    closed_target         text CHECK (closed_target ~ '^(\+[1-9][0-9]{5,14}|000387[0-9]{6})$'),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, code),
    UNIQUE (tenant_id, id)
);

CREATE TABLE agents (
    id             bigserial PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    pin_hash       text NOT NULL,
    contact_account_id bigint,
    contact_e164   text CHECK (contact_e164 ~ '^\+[1-9][0-9]{5,14}$'),
    CHECK (num_nonnulls(contact_account_id, contact_e164) <= 1),
    FOREIGN KEY (tenant_id, contact_account_id) REFERENCES sip_accounts (tenant_id, id) ON DELETE SET NULL (contact_account_id),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE queue_members (
    queue_id  bigint NOT NULL,
    agent_id  bigint NOT NULL,
    tenant_id bigint NOT NULL,
    level     integer NOT NULL DEFAULT 1 CHECK (level BETWEEN 1 AND 9),
    position  integer NOT NULL DEFAULT 1 CHECK (position BETWEEN 1 AND 99),
    PRIMARY KEY (queue_id, agent_id),
    FOREIGN KEY (tenant_id, queue_id) REFERENCES queues (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id) ON DELETE CASCADE
);

-- ---------------------------------------------------------------- numbers
-- A row is a single number or a whole block (head number + DDI range).
-- Members of a block have no rows of their own: a block cannot be split.
CREATE TABLE numbers (
    id          bigserial PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    e164        text NOT NULL UNIQUE CHECK (e164 ~ '^\+[1-9][0-9]{5,14}$'),
    block_size  integer CHECK (block_size IN (10, 20, 30, 50, 70, 100, 200, 300, 500, 700, 1000)),
    central_ddi text CHECK (central_ddi ~ '^[0-9]{1,3}$'),
    origin      text NOT NULL DEFAULT 'new' CHECK (origin IN ('new', 'ported_in')),
    status      text NOT NULL DEFAULT 'active'
                CHECK (status IN ('porting_in', 'active', 'porting_out', 'ported_out')),
    target_kind text CHECK (target_kind IN ('account', 'queue', 'fax', 'group')),
    account_id  bigint,
    queue_id    bigint,
    faxbox_id   bigint,
    group_id    bigint,
    created_on  date NOT NULL DEFAULT current_date,
    CHECK (central_ddi IS NULL OR block_size IS NOT NULL),
    CONSTRAINT numbers_target_check CHECK (
        (target_kind IS NULL AND num_nonnulls(account_id, queue_id, faxbox_id, group_id) = 0)
        OR (target_kind = 'account' AND account_id IS NOT NULL AND num_nonnulls(queue_id, faxbox_id, group_id) = 0)
        OR (target_kind = 'queue' AND queue_id IS NOT NULL AND num_nonnulls(account_id, faxbox_id, group_id) = 0)
        OR (target_kind = 'fax' AND faxbox_id IS NOT NULL AND num_nonnulls(account_id, queue_id, group_id) = 0)
        OR (target_kind = 'group' AND group_id IS NOT NULL AND num_nonnulls(account_id, queue_id, faxbox_id) = 0)),
    FOREIGN KEY (tenant_id, account_id) REFERENCES sip_accounts (tenant_id, id),
    FOREIGN KEY (tenant_id, queue_id) REFERENCES queues (tenant_id, id),
    FOREIGN KEY (tenant_id, faxbox_id) REFERENCES faxboxes (tenant_id, id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES ring_groups (tenant_id, id)
);

-- digits a block appends to its head number
CREATE FUNCTION dustel_ddi_digits(block_size integer) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN block_size IS NULL THEN 0
                WHEN block_size <= 10 THEN 1
                WHEN block_size <= 100 THEN 2
                ELSE 3 END
$$;

-- the number row (single or block) that holds e164, if any
CREATE FUNCTION dustel_number_holding(x text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT id FROM numbers n
     WHERE n.e164 = x
        OR (n.block_size IS NOT NULL
            AND starts_with(x, n.e164)
            AND length(x) = length(n.e164) + dustel_ddi_digits(n.block_size)
            AND substr(x, length(n.e164) + 1)::integer < n.block_size)
     LIMIT 1
$$;

-- how many numbers count against a quota
CREATE FUNCTION dustel_number_count(t bigint) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(coalesce(block_size, 1)), 0)::integer
      FROM numbers WHERE tenant_id = t AND status <> 'ported_out'
$$;

CREATE TABLE porting_orders (
    id          bigserial PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    number_id   bigint REFERENCES numbers ON DELETE SET NULL,
    e164        text NOT NULL,
    block_size  integer,
    direction   text NOT NULL CHECK (direction IN ('in', 'out')),
    state       text NOT NULL DEFAULT 'requested'
                CHECK (state IN ('requested', 'confirmed', 'done', 'rejected')),
    carrier     text NOT NULL CHECK (length(carrier) BETWEEN 1 AND 64),
    requested_at timestamptz NOT NULL DEFAULT now(),
    port_date   date,
    closed_at   timestamptz,
    reason      text CHECK (length(reason) <= 200),
    CONSTRAINT porting_orders_date_check CHECK (state IN ('requested', 'rejected') OR port_date IS NOT NULL)
);
CREATE UNIQUE INDEX porting_orders_one_open ON porting_orders (e164)
    WHERE state IN ('requested', 'confirmed');

-- ---------------------------------------------------------------- forwarding
-- One diversion per account: a forwarding (immediate / no answer /
-- unregistered) or a group call (ring together).  Up to 10 targets, at most
-- 2 external; a target never has a diversion of its own.
CREATE TABLE diversions (
    account_id      bigint PRIMARY KEY,
    tenant_id       bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('forward', 'group')),
    mode            text CHECK (mode IN ('immediate', 'no_answer', 'unregistered')),
    timeout_seconds integer CHECK (timeout_seconds BETWEEN 5 AND 120),
    schedule        jsonb,
    CONSTRAINT diversions_kind_mode_check CHECK ((kind = 'forward') = (mode IS NOT NULL)),
    CONSTRAINT diversions_timeout_check CHECK (
        (mode = 'no_answer' AND timeout_seconds IS NOT NULL)
        OR (kind = 'group' AND timeout_seconds IS NOT NULL)
        OR (mode IN ('immediate', 'unregistered') AND timeout_seconds IS NULL)),
    FOREIGN KEY (tenant_id, account_id) REFERENCES sip_accounts (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE diversion_targets (
    account_id        bigint NOT NULL REFERENCES diversions ON DELETE CASCADE,
    tenant_id         bigint NOT NULL,
    position          integer NOT NULL CHECK (position BETWEEN 1 AND 10),
    target_account_id bigint,
    external_e164     text CHECK (external_e164 ~ '^\+[1-9][0-9]{5,14}$'),
    PRIMARY KEY (account_id, position),
    UNIQUE (account_id, target_account_id),
    UNIQUE (account_id, external_e164),
    CHECK (num_nonnulls(target_account_id, external_e164) = 1),
    CHECK (target_account_id IS DISTINCT FROM account_id),
    FOREIGN KEY (tenant_id, target_account_id) REFERENCES sip_accounts (tenant_id, id) ON DELETE CASCADE
);

-- ---------------------------------------------------------------- lists, dials
CREATE TABLE screening (
    account_id bigint NOT NULL REFERENCES sip_accounts ON DELETE CASCADE,
    list       text NOT NULL CHECK (list IN ('black', 'white')),
    pattern    text NOT NULL CHECK (pattern = 'anonymous' OR pattern ~ '^\+[0-9]{1,15}\*?$'),
    PRIMARY KEY (account_id, list, pattern)
);

CREATE TABLE speed_dials (
    tenant_id bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    code      text NOT NULL CHECK (code ~ '^[0-9]{1,3}$'),
    target    text NOT NULL CHECK (target ~ '^(\+[1-9][0-9]{5,14}|000387[0-9]{6}|110|112)$'),
    PRIMARY KEY (tenant_id, code)
);

-- ================================================================ triggers

-- Plan / customer type / option consistency on tenants.
CREATE FUNCTION dustel_tenants_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    cap integer;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.sip_domain <> OLD.sip_domain THEN
        PERFORM dustel_refuse('domain: cannot change (it is the SIP digest realm every HA1 is bound to)');
    END IF;
    IF NEW.plan = 'business_flex' AND NEW.number_quota IS NULL THEN
        NEW.number_quota := 10;
    END IF;
    IF NEW.plan <> 'business_flex' AND NEW.number_quota IS NOT NULL THEN
        PERFORM dustel_refuse('number_quota: only business flex chooses a number quota');
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF OLD.clip_agreement_on IS NOT NULL AND NEW.clip_agreement_on IS NULL
           AND EXISTS (SELECT 1 FROM tenant_options WHERE tenant_id = NEW.id AND option = 'clip_no_screening') THEN
            PERFORM dustel_refuse('clip_agreement: cannot be withdrawn while CLIP no screening is booked');
        END IF;
        -- a plan change must still fit what the tenant has
        SELECT count(*) INTO n FROM sip_accounts WHERE tenant_id = NEW.id;
        IF NEW.plan <> OLD.plan AND EXISTS (
               SELECT 1 FROM tenant_options o WHERE o.tenant_id = NEW.id
                  AND NOT EXISTS (SELECT 1 FROM plan_options po WHERE po.plan = NEW.plan AND po.option = o.option)) THEN
            PERFORM dustel_refuse(format('plan: booked option(s) %s not available on plan %s; cancel them first',
                                         (SELECT string_agg(o.option, ', ' ORDER BY o.option) FROM tenant_options o
                                           WHERE o.tenant_id = NEW.id AND NOT EXISTS (
                                               SELECT 1 FROM plan_options po WHERE po.plan = NEW.plan AND po.option = o.option)),
                                         NEW.plan));
        END IF;
        SELECT coalesce(p.accounts_max, p.accounts_included) INTO cap FROM plans p WHERE p.code = NEW.plan;
        IF NEW.plan <> OLD.plan AND n > cap + dustel_option_qty(NEW.id, 'extra_account') THEN
            PERFORM dustel_refuse(format('plan: %s allows %s SIP accounts, the tenant has %s', NEW.plan, cap, n));
        END IF;
        IF NEW.plan <> OLD.plan AND EXISTS (SELECT 1 FROM queues WHERE tenant_id = NEW.id)
           AND NEW.plan <> 'business_flex' THEN
            PERFORM dustel_refuse('plan: the tenant has ACD queues, which need business flex');
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tenants_check BEFORE INSERT OR UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION dustel_tenants_check();

-- Deferred: after a plan change, numbers must fit the new plan's cap.
CREATE FUNCTION dustel_tenants_numbers_fit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cap integer;
    n integer;
BEGIN
    SELECT coalesce(p.numbers_max, NEW.number_quota) INTO cap FROM plans p WHERE p.code = NEW.plan;
    n := dustel_number_count(NEW.id);
    IF cap IS NOT NULL AND n > cap THEN
        PERFORM dustel_refuse(format('number_quota: %s numbers held, the plan/quota allows %s', n, cap));
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER tenants_numbers_fit AFTER UPDATE OF plan, number_quota ON tenants
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dustel_tenants_numbers_fit();

CREATE FUNCTION dustel_tenant_options_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    po plan_options;
BEGIN
    SELECT * INTO po FROM plan_options WHERE plan = NEW.plan AND option = NEW.option;
    IF NOT FOUND THEN
        PERFORM dustel_refuse(format('option: %s is not available on plan %s', NEW.option, NEW.plan));
    END IF;
    IF po.max_purchase IS NOT NULL AND NEW.quantity > po.max_purchase THEN
        PERFORM dustel_refuse(format('quantity: %s can be booked at most %s time(s) on plan %s',
                                     NEW.option, po.max_purchase, NEW.plan));
    END IF;
    IF po.requires_agreement AND (SELECT clip_agreement_on FROM tenants WHERE id = NEW.tenant_id) IS NULL THEN
        PERFORM dustel_refuse(format('option: %s needs a signed agreement on file (tenant set --clip-agreement DATE)',
                                     NEW.option));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tenant_options_check BEFORE INSERT OR UPDATE ON tenant_options
    FOR EACH ROW EXECUTE FUNCTION dustel_tenant_options_check();

-- Removing an option must leave the tenant within its limits.
CREATE FUNCTION dustel_tenant_options_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t bigint := OLD.tenant_id;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = t) THEN
        RETURN NULL;  -- tenant deleted
    END IF;
    IF OLD.option = 'acd' AND dustel_option_qty(t, 'acd') = 0
       AND EXISTS (SELECT 1 FROM queues WHERE tenant_id = t) THEN
        PERFORM dustel_refuse('option: acd cannot be cancelled while the tenant has queues');
    END IF;
    IF OLD.option = 'extra_account' AND (SELECT count(*) FROM sip_accounts WHERE tenant_id = t)
          > (SELECT p.accounts_included FROM tenants te JOIN plans p ON p.code = te.plan WHERE te.id = t)
            + dustel_option_qty(t, 'extra_account') THEN
        PERFORM dustel_refuse('quantity: fewer extra accounts than the tenant has SIP accounts beyond the included ones');
    END IF;
    IF OLD.option = 'clip_no_screening' AND EXISTS (
           SELECT 1 FROM sip_accounts a WHERE a.tenant_id = t AND a.caller_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM numbers n WHERE n.tenant_id = t
                               AND n.id = dustel_number_holding(a.caller_id))) THEN
        PERFORM dustel_refuse('option: clip_no_screening is in use by an account presenting a foreign caller ID');
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER tenant_options_removed AFTER DELETE OR UPDATE ON tenant_options
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dustel_tenant_options_removed();

-- SIP accounts: count per plan; caller ID must be the tenant's own number.
CREATE FUNCTION dustel_sip_accounts_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    te tenants;
    p plans;
    n integer;
    cap integer;
BEGIN
    -- serialise account creation per tenant so the count cannot race
    SELECT * INTO te FROM tenants WHERE id = NEW.tenant_id FOR UPDATE;
    SELECT * INTO p FROM plans WHERE code = te.plan;
    IF TG_OP = 'INSERT' THEN
        SELECT count(*) INTO n FROM sip_accounts WHERE tenant_id = NEW.tenant_id;
        cap := coalesce(p.accounts_max, p.accounts_included + dustel_option_qty(te.id, 'extra_account'));
        IF n >= cap THEN
            IF p.accounts_max IS NULL THEN
                PERFORM dustel_refuse(format('account: plan %s includes %s SIP accounts and %s extra booked; book the extra_account option for more',
                                             te.plan, p.accounts_included, cap - p.accounts_included));
            ELSE
                PERFORM dustel_refuse(format('account: plan %s allows at most %s SIP accounts', te.plan, cap));
            END IF;
        END IF;
    ELSIF NEW.tenant_id <> OLD.tenant_id THEN
        PERFORM dustel_refuse('tenant: an account cannot move to another tenant');
    END IF;
    IF NEW.caller_id IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.caller_id IS DISTINCT FROM OLD.caller_id)
       AND dustel_option_qty(te.id, 'clip_no_screening') = 0
       AND NOT EXISTS (SELECT 1 FROM numbers WHERE tenant_id = te.id AND status IN ('active', 'porting_out')
                        AND id = dustel_number_holding(NEW.caller_id)) THEN
        PERFORM dustel_refuse(format('caller_id: %s is not one of the tenant''s own numbers (CLIP no screening not booked)',
                                     NEW.caller_id));
    END IF;
    IF NEW.location_area_code IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM addresses WHERE tenant_id = te.id AND area_code = NEW.location_area_code) THEN
        PERFORM dustel_refuse(format('location: area code 0%s is not an address of the tenant', NEW.location_area_code));
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(NEW.extra_zones) z WHERE z NOT IN (SELECT code FROM zones)) THEN
        PERFORM dustel_refuse('zones: unknown zone');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sip_accounts_check BEFORE INSERT OR UPDATE ON sip_accounts
    FOR EACH ROW EXECUTE FUNCTION dustel_sip_accounts_check();

-- Numbers: never overlapping, area-bound, within quota, target rules.
CREATE FUNCTION dustel_numbers_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    te tenants;
    p plans;
    other numbers;
    cap integer;
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('dustel.numbers'));
    SELECT * INTO te FROM tenants WHERE id = NEW.tenant_id;
    SELECT * INTO p FROM plans WHERE code = te.plan;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.e164 <> OLD.e164 OR NEW.block_size IS DISTINCT FROM OLD.block_size THEN
            PERFORM dustel_refuse('number: a number or block cannot be renumbered or resized; add a new one');
        END IF;
        IF NEW.tenant_id <> OLD.tenant_id THEN
            PERFORM dustel_refuse('number: a number cannot move to another tenant; port it');
        END IF;
    END IF;
    IF NEW.central_ddi IS NOT NULL AND (length(NEW.central_ddi) <> dustel_ddi_digits(NEW.block_size)
                                        OR NEW.central_ddi::integer >= NEW.block_size) THEN
        PERFORM dustel_refuse(format('central: DDI %s is not in the block (%s digit(s), 0..%s)',
                                     NEW.central_ddi, dustel_ddi_digits(NEW.block_size), NEW.block_size - 1));
    END IF;
    IF TG_OP = 'INSERT' THEN
        SELECT * INTO other FROM numbers o
         WHERE starts_with(NEW.e164, o.e164) OR starts_with(o.e164, NEW.e164) LIMIT 1;
        IF FOUND THEN
            PERFORM dustel_refuse(format('number: %s overlaps %s%s already provisioned', NEW.e164, other.e164,
                                         CASE WHEN other.block_size IS NULL THEN ''
                                              ELSE format(' (block of %s)', other.block_size) END));
        END IF;
        IF dustel_is_geographic(NEW.e164) AND NOT EXISTS (
               SELECT 1 FROM addresses a WHERE a.tenant_id = NEW.tenant_id
                  AND starts_with(NEW.e164, '+49' || a.area_code)) THEN
            PERFORM dustel_refuse(format('number: %s is a geographic number outside the tenant''s area codes (%s); local-area binding needs an address there',
                                         NEW.e164,
                                         coalesce((SELECT string_agg('0' || area_code, ', ' ORDER BY area_code)
                                                     FROM (SELECT DISTINCT area_code FROM addresses
                                                            WHERE tenant_id = NEW.tenant_id) s), 'none')));
        END IF;
        cap := coalesce(p.numbers_max, te.number_quota);
        n := dustel_number_count(te.id) + coalesce(NEW.block_size, 1);
        IF cap IS NOT NULL AND n > cap THEN
            PERFORM dustel_refuse(format('number: %s would hold %s numbers, plan %s allows %s',
                                         te.name, n, te.plan, cap));
        END IF;
        IF NEW.origin = 'ported_in' AND p.porting_free_max IS NOT NULL AND
           (SELECT coalesce(sum(coalesce(block_size, 1)), 0) FROM numbers
             WHERE tenant_id = te.id AND origin = 'ported_in' AND status <> 'ported_out')
           + coalesce(NEW.block_size, 1) > p.porting_free_max THEN
            PERFORM dustel_refuse(format('number: plan %s ports in at most %s numbers', te.plan, p.porting_free_max));
        END IF;
    END IF;
    IF NEW.status = 'ported_out' AND NEW.target_kind IS NOT NULL THEN
        NEW.target_kind := NULL; NEW.account_id := NULL; NEW.queue_id := NULL;
        NEW.faxbox_id := NULL; NEW.group_id := NULL;
    END IF;
    IF NEW.target_kind = 'queue' AND dustel_option_qty(te.id, 'acd') = 0 THEN
        PERFORM dustel_refuse('target: routing to a queue needs the acd option');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER numbers_check BEFORE INSERT OR UPDATE ON numbers
    FOR EACH ROW EXECUTE FUNCTION dustel_numbers_check();

CREATE FUNCTION dustel_numbers_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sip_accounts a WHERE a.tenant_id = OLD.tenant_id
                  AND a.caller_id IS NOT NULL AND dustel_number_holding(a.caller_id) IS NULL
                  AND dustel_option_qty(OLD.tenant_id, 'clip_no_screening') = 0) THEN
        PERFORM dustel_refuse(format('number: %s is the caller ID of an account; change that first', OLD.e164));
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER numbers_deleted AFTER DELETE ON numbers
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dustel_numbers_deleted();

-- Addresses: moving away from an area is not allowed with its numbers.
CREATE FUNCTION dustel_addresses_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bound text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = OLD.tenant_id) THEN
        RETURN OLD;  -- the whole tenant is being deleted
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.area_code = OLD.area_code THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.tenant_id <> OLD.tenant_id THEN
        PERFORM dustel_refuse('address: cannot move to another tenant');
    END IF;
    SELECT n.e164 INTO bound FROM numbers n
     WHERE n.tenant_id = OLD.tenant_id AND n.status <> 'ported_out'
       AND dustel_is_geographic(n.e164)
       AND starts_with(n.e164, '+49' || OLD.area_code)
       AND NOT EXISTS (SELECT 1 FROM addresses a WHERE a.tenant_id = OLD.tenant_id AND a.id <> OLD.id
                          AND starts_with(n.e164, '+49' || a.area_code))
     LIMIT 1;
    IF bound IS NOT NULL THEN
        PERFORM dustel_refuse(format('address: number %s is bound to area code 0%s; moving away is not allowed with the number',
                                     bound, OLD.area_code));
    END IF;
    IF EXISTS (SELECT 1 FROM sip_accounts a WHERE a.tenant_id = OLD.tenant_id
                  AND a.location_area_code = OLD.area_code
                  AND NOT EXISTS (SELECT 1 FROM addresses b WHERE b.tenant_id = OLD.tenant_id
                                     AND b.id <> OLD.id AND b.area_code = OLD.area_code)) THEN
        PERFORM dustel_refuse(format('address: area code 0%s is the emergency location of an account', OLD.area_code));
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER addresses_check BEFORE UPDATE OR DELETE ON addresses
    FOR EACH ROW EXECUTE FUNCTION dustel_addresses_check();

-- ACD needs its option.
CREATE FUNCTION dustel_queues_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF dustel_option_qty(NEW.tenant_id, 'acd') = 0 THEN
        PERFORM dustel_refuse('queue: ACD (DUSqueue) needs the acd option (business flex only)');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER queues_check BEFORE INSERT ON queues
    FOR EACH ROW EXECUTE FUNCTION dustel_queues_check();

-- Diversions: no forwarding behind forwarding, no mixes with group call.
CREATE FUNCTION dustel_diversions_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    src text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('dustel.diversions'), NEW.tenant_id::integer);
    SELECT a.username INTO src FROM diversion_targets t JOIN sip_accounts a ON a.id = t.account_id
     WHERE t.target_account_id = NEW.account_id LIMIT 1;
    IF src IS NOT NULL THEN
        PERFORM dustel_refuse(format('account: %s is a forwarding/group target of %s and cannot forward or group-call itself',
                                     (SELECT username FROM sip_accounts WHERE id = NEW.account_id), src));
    END IF;
    IF NEW.schedule IS NOT NULL AND NOT (SELECT p.timed_forwarding FROM tenants te JOIN plans p ON p.code = te.plan
                                          WHERE te.id = NEW.tenant_id) THEN
        PERFORM dustel_refuse('schedule: time-controlled forwarding and group call need business flex');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER diversions_check BEFORE INSERT OR UPDATE ON diversions
    FOR EACH ROW EXECUTE FUNCTION dustel_diversions_check();

CREATE FUNCTION dustel_diversion_targets_check() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NEW;
END $$;
CREATE TRIGGER diversion_targets_check BEFORE INSERT OR UPDATE ON diversion_targets
    FOR EACH ROW EXECUTE FUNCTION dustel_diversion_targets_check();
