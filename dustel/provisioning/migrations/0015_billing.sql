-- depends: 0014_policy_cache
-- Billing (SPEC F-09, issue 11): invoices and credit notes with gap-free
-- numbers, the payments that reach us, SEPA mandates and direct debits,
-- automatic top-up settings, and the scheduler's record of job runs.
--
-- The ledger stays the one account of a tenant with us: every movement is a
-- row with a unique reference (a replay is a no-op), and tenant_money's
-- balance is the sum of them.

ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind IN (
    'topup',        -- prepaid credit bought (transfer, PayPal, Giropay, Klarna, direct debit)
    'charge',       -- a call's charge (settlement)
    'adjust',       -- a correction from reconciliation
    'fee',          -- a fee outside an invoice (prepaid number and porting fees, a return fee)
    'invoice',      -- what an invoice bills beyond the call charges already booked
    'payment',      -- money received for invoices (transfer, direct debit)
    'return',       -- a direct debit the bank took back
    'credit_note'   -- a credit note's amount
));
ALTER TABLE ledger ADD COLUMN invoice_id bigint;

-- Per tenant, what billing needs beyond provisioning.
CREATE TABLE billing_profiles (
    tenant_id                 bigint PRIMARY KEY REFERENCES tenants ON DELETE CASCADE,
    -- prepaid: below this (balance - reserved) the nightly job debits
    autotopup_threshold_cents bigint CHECK (autotopup_threshold_cents > 0),
    autotopup_amount_cents    bigint CHECK (autotopup_amount_cents BETWEEN 500 AND 50000),
    -- public bodies: the Leitweg-ID (XRechnung BT-10, "buyer reference")
    leitweg_id                text CHECK (leitweg_id ~ '^[0-9]{2,12}(-[0-9A-Za-z]{1,30})?-[0-9]{2}$'),
    vat_id                    text CHECK (vat_id ~ '^[A-Z]{2}[0-9A-Za-z]{2,13}$'),
    CHECK ((autotopup_threshold_cents IS NULL) = (autotopup_amount_cents IS NULL))
);

-- Invoice and credit-note numbers: one counter per series and year, taken
-- under a row lock in the transaction that stores the document, so a number
-- is used exactly when the document exists (gap-free).
CREATE TABLE document_counters (
    series text NOT NULL CHECK (series IN ('RE', 'GS')),
    year   integer NOT NULL,
    last   integer NOT NULL CHECK (last >= 0),
    PRIMARY KEY (series, year)
);

CREATE TABLE invoices (
    id            bigserial PRIMARY KEY,
    number        text NOT NULL UNIQUE,
    kind          text NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
    tenant_id     bigint NOT NULL REFERENCES tenants ON DELETE RESTRICT,   -- kept 10 years (§ 147 AO)
    period        date NOT NULL CHECK (extract(day FROM period) = 1),      -- the usage month
    issued_on     date NOT NULL,
    due_on        date NOT NULL,
    prices_net    boolean NOT NULL,
    vat_percent   integer NOT NULL,
    net_cents     bigint NOT NULL,
    vat_cents     bigint NOT NULL,
    gross_cents   bigint NOT NULL,
    usage_cents   bigint NOT NULL DEFAULT 0,    -- call charges it bills (booked as they happened)
    corrects      bigint REFERENCES invoices,
    reason        text CHECK (length(reason) <= 200),
    payment_means text NOT NULL CHECK (payment_means IN ('sepa_dd', 'transfer')),
    recipient     jsonb NOT NULL,               -- name and address as they were on the day
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (gross_cents = net_cents + vat_cents),
    CHECK ((kind = 'credit_note') = (corrects IS NOT NULL))
);
CREATE UNIQUE INDEX invoices_one_per_month ON invoices (tenant_id, period) WHERE kind = 'invoice';
CREATE INDEX invoices_tenant ON invoices (tenant_id, period);

CREATE TABLE invoice_lines (
    invoice_id   bigint NOT NULL REFERENCES invoices ON DELETE CASCADE,
    position     integer NOT NULL CHECK (position >= 1),
    kind         text NOT NULL CHECK (kind IN ('usage', 'base_fee', 'option', 'numbers', 'porting', 'correction')),
    description  text NOT NULL,
    quantity     integer NOT NULL,
    unit_cents   bigint NOT NULL,
    amount_cents bigint NOT NULL,   -- in the plan's prices: net (business) or gross (private)
    net_cents    bigint NOT NULL,   -- the line's net amount (EN 16931 BT-131)
    period_start date NOT NULL,
    period_end   date NOT NULL,
    PRIMARY KEY (invoice_id, position),
    CHECK (amount_cents = quantity * unit_cents)
);

ALTER TABLE ledger ADD CONSTRAINT ledger_invoice_fkey FOREIGN KEY (invoice_id) REFERENCES invoices;

-- SEPA direct-debit mandates; one active per tenant.
CREATE TABLE sepa_mandates (
    id         bigserial PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    reference  text NOT NULL UNIQUE CHECK (reference ~ '^[A-Za-z0-9+?/:().,'' -]{1,35}$'),
    holder     text NOT NULL CHECK (length(holder) BETWEEN 1 AND 70),
    iban       text NOT NULL CHECK (iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}$'),
    bic        text NOT NULL CHECK (bic ~ '^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$'),
    signed_on  date NOT NULL,
    revoked_on date,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX sepa_mandates_one_active ON sepa_mandates (tenant_id) WHERE revoked_on IS NULL;

CREATE TABLE direct_debits (
    id          bigserial PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    mandate_id  bigint NOT NULL REFERENCES sepa_mandates,
    purpose     text NOT NULL CHECK (purpose IN ('autotopup', 'invoice')),
    ref         text NOT NULL UNIQUE,        -- autotopup:<tenant>:<night> / invoice:<number>: once each
    invoice_id  bigint REFERENCES invoices,
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    due_on      date NOT NULL,
    sequence    text CHECK (sequence IN ('FRST', 'RCUR')),   -- fixed when exported
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'exported', 'collected', 'returned')),
    export_id   text,                       -- the pain.008 message id
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((purpose = 'invoice') = (invoice_id IS NOT NULL))
);
CREATE INDEX direct_debits_due ON direct_debits (due_on) WHERE state IN ('pending', 'exported');

-- Money that reached us by other ways than a direct debit, and bank
-- statement lines nobody could match (kept, never dropped).
CREATE TABLE payments (
    id           bigserial PRIMARY KEY,
    tenant_id    bigint REFERENCES tenants ON DELETE SET NULL,
    method       text NOT NULL CHECK (method IN ('transfer', 'paypal', 'giropay', 'klarna')),
    amount_cents bigint NOT NULL,
    ref          text NOT NULL UNIQUE,       -- the bank's / provider's transaction id
    reference    text NOT NULL DEFAULT '',   -- what the payer wrote
    state        text NOT NULL CHECK (state IN ('held', 'credited', 'unmatched')),
    invoice_id   bigint REFERENCES invoices,
    received_on  date NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The scheduler's jobs: one row per job and period (a night, a month),
-- inserted by the run that does the work, so no period runs twice.
CREATE TABLE job_runs (
    job         text NOT NULL,
    period      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    result      jsonb,
    PRIMARY KEY (job, period)
);

-- Plan changes start a new minimum term; a cancelled contract ends on
-- cancel_at (a month's last day, not before the minimum term's end).
ALTER TABLE tenants ADD COLUMN cancel_at date;
ALTER TABLE tenants ADD COLUMN plan_since date;
UPDATE tenants SET plan_since = created_on;
ALTER TABLE tenants ALTER COLUMN plan_since SET NOT NULL, ALTER COLUMN plan_since SET DEFAULT current_date;

-- Numbers with a notice: the last day of the billing year they were
-- cancelled for (the yearly fee is not charged for a year after it).
ALTER TABLE numbers ADD COLUMN cancel_at date;
