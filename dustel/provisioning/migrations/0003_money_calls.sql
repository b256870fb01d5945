-- depends: 0002_psap_moh
-- Zones and rates (F-04, F-09), the money ledger, and live calls with their
-- reservations (reserve before connect, settle on hangup, idempotent).

CREATE TABLE zone_prefixes (
    prefix text PRIMARY KEY CHECK (prefix ~ '^[0-9]{0,15}$'),   -- E.164 digits, '' = default
    zone   text NOT NULL REFERENCES zones
);
INSERT INTO zone_prefixes VALUES
 ('', 'world'),
 ('49', 'de_fixed'), ('4915', 'de_mobile'), ('4916', 'de_mobile'), ('4917', 'de_mobile'),
 ('49137', 'de_masscall'), ('49138', 'de_masscall'), ('49180', 'de_service'), ('49900', 'de_premium'),
 ('49118', 'de_special'), ('49700', 'de_special'), ('4932', 'de_special'), ('49115', 'de_special'),
 ('49116', 'de_special'), ('4919', 'de_special'),
 ('30', 'eu_fixed'), ('306', 'eu_mobile'), ('31', 'eu_fixed'), ('316', 'eu_mobile'),
 ('32', 'eu_fixed'), ('324', 'eu_mobile'), ('33', 'eu_fixed'), ('336', 'eu_mobile'), ('337', 'eu_mobile'),
 ('34', 'eu_fixed'), ('346', 'eu_mobile'), ('347', 'eu_mobile'), ('351', 'eu_fixed'), ('3519', 'eu_mobile'),
 ('352', 'eu_fixed'), ('3526', 'eu_mobile'), ('353', 'eu_fixed'), ('3538', 'eu_mobile'),
 ('356', 'eu_fixed'), ('357', 'eu_fixed'), ('358', 'eu_fixed'), ('3584', 'eu_mobile'), ('35850', 'eu_mobile'),
 ('359', 'eu_fixed'), ('36', 'eu_fixed'), ('3620', 'eu_mobile'), ('3630', 'eu_mobile'), ('3670', 'eu_mobile'),
 ('370', 'eu_fixed'), ('3706', 'eu_mobile'), ('371', 'eu_fixed'), ('3712', 'eu_mobile'), ('372', 'eu_fixed'),
 ('3725', 'eu_mobile'), ('385', 'eu_fixed'), ('3859', 'eu_mobile'), ('386', 'eu_fixed'), ('3864', 'eu_mobile'),
 ('39', 'eu_fixed'), ('393', 'eu_mobile'), ('40', 'eu_fixed'), ('407', 'eu_mobile'), ('41', 'eu_fixed'),
 ('417', 'eu_mobile'), ('420', 'eu_fixed'), ('4206', 'eu_mobile'), ('4207', 'eu_mobile'), ('421', 'eu_fixed'),
 ('4219', 'eu_mobile'), ('423', 'eu_fixed'), ('43', 'eu_fixed'), ('4366', 'eu_mobile'), ('4367', 'eu_mobile'),
 ('4368', 'eu_mobile'), ('4369', 'eu_mobile'), ('44', 'eu_fixed'), ('447', 'eu_mobile'), ('45', 'eu_fixed'),
 ('46', 'eu_fixed'), ('467', 'eu_mobile'), ('47', 'eu_fixed'), ('474', 'eu_mobile'), ('479', 'eu_mobile'),
 ('48', 'eu_fixed'), ('485', 'eu_mobile'), ('486', 'eu_mobile'), ('487', 'eu_mobile'), ('488', 'eu_mobile'),
 ('870', 'satellite'), ('881', 'satellite'), ('882', 'satellite');

-- Per-minute prices by destination prefix (longest match), integer cents.
CREATE TABLE rates (
    prefix            text PRIMARY KEY CHECK (prefix ~ '^[0-9]{0,15}$'),
    cents_per_minute  integer NOT NULL CHECK (cents_per_minute BETWEEN 0 AND 100000),
    description       text NOT NULL DEFAULT '' CHECK (length(description) <= 100)
);

-- One row per tenant, locked for every money move: balance (prepaid),
-- what open reservations hold, start credit left.
CREATE TABLE tenant_money (
    tenant_id        bigint PRIMARY KEY REFERENCES tenants ON DELETE CASCADE,
    balance_cents    bigint NOT NULL DEFAULT 0,
    reserved_cents   bigint NOT NULL DEFAULT 0 CHECK (reserved_cents >= 0),
    free_seconds     integer NOT NULL DEFAULT 0 CHECK (free_seconds >= 0),
    reserved_free    integer NOT NULL DEFAULT 0 CHECK (reserved_free >= 0)
);

-- Money that moved: top-ups (+) and charges (-).  ref makes every move
-- idempotent (a replayed settlement or top-up is a no-op).
CREATE TABLE ledger (
    id           bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    amount_cents bigint NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('topup', 'charge', 'adjust')),
    ref          text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_tenant_month ON ledger (tenant_id, created_at);

-- Calls the policy admitted: the live line counts and the reservations.
CREATE TABLE calls (
    node            text NOT NULL,
    call_id         text NOT NULL,
    tenant_id       bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    account         text NOT NULL,
    direction       text NOT NULL CHECK (direction IN ('in', 'out')),
    route           text NOT NULL,
    destination     text NOT NULL,
    zone            text NOT NULL DEFAULT '',
    flat_zone       text,
    cents_per_minute integer NOT NULL DEFAULT 0,
    increment       integer NOT NULL DEFAULT 1,
    max_seconds     integer NOT NULL,
    reserved_cents  bigint NOT NULL DEFAULT 0,
    reserved_free   integer NOT NULL DEFAULT 0,
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'settled', 'expired')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    billsec         integer,
    charged_cents   bigint,
    settled_at      timestamptz,
    PRIMARY KEY (node, call_id)
);
CREATE INDEX calls_active ON calls (tenant_id, direction) WHERE state = 'active';
CREATE INDEX calls_expiring ON calls (expires_at) WHERE state = 'active';

-- Every tenant has a money row; starter tenants get their start credit.
CREATE FUNCTION dustel_tenant_money_init() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_money (tenant_id, free_seconds)
    VALUES (NEW.id, (SELECT start_credit_seconds FROM plans WHERE code = NEW.plan));
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_money_init AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION dustel_tenant_money_init();
INSERT INTO tenant_money (tenant_id, free_seconds)
    SELECT t.id, p.start_credit_seconds FROM tenants t JOIN plans p ON p.code = t.plan;
