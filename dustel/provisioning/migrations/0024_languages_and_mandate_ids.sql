-- depends: 0021_plan_periods
-- Issue 31.12: invoices in the tenant's language (German unless the tenant
-- chose English).  The language an invoice or credit note was issued in is
-- stored with it: an issued document never changes (GoBD), its headings are
-- rendered in that language for ever.  Documents issued before were German
-- (their headings; their line texts are stored as they were).

CREATE DOMAIN dustel_language AS text CHECK (VALUE IN ('de', 'en'));     -- billing/texts.py: LANGUAGES

ALTER TABLE tenants ADD COLUMN language dustel_language NOT NULL DEFAULT 'de';
ALTER TABLE invoices ADD COLUMN language dustel_language NOT NULL DEFAULT 'de';
ALTER TABLE invoices ALTER COLUMN language DROP DEFAULT;        -- a new document names its language

-- Option and zone names in German beside the English ones (description).
ALTER TABLE plan_options ADD COLUMN description_de text;
COMMENT ON COLUMN plan_options.description IS 'the option''s name in English (description_de: German)';
UPDATE plan_options po SET description_de = v.de FROM (VALUES
 ('starter',       'per_minute_billing', 'Abrechnung je angefangene Minute (60/60) statt sekundengenau'),
 ('complete',      'flat_de_fixed',      'Flatrate deutsches Festnetz, je ein gleichzeitiges Gespräch'),
 ('complete',      'flat_de_mobile',     'Flatrate deutsche Mobilfunknetze, ein gleichzeitiges Gespräch'),
 ('business_flex', 'flat_de_fixed',      'Flatrate deutsches Festnetz, je ein gleichzeitiges Gespräch'),
 ('business_flex', 'flat_de_mobile',     'Flatrate deutsche Mobilfunknetze, je ein gleichzeitiges Gespräch'),
 ('business_flex', 'extra_line',         'ein weiteres gleichzeitiges Gespräch, ein- und ausgehend'),
 ('business_flex', 'extra_account',      'ein weiteres SIP-Konto'),
 ('business_flex', 'acd',                'DUSqueue Call-Center-Warteschlangen (ACD)'),
 ('business_flex', 'clip_no_screening',  'beliebige Rufnummer anzeigen (CLIP no screening)')
) AS v(plan, option, de) WHERE po.plan = v.plan AND po.option = v.option;

ALTER TABLE zones ADD COLUMN description_de text;
COMMENT ON COLUMN zones.description IS 'the zone''s name in English (description_de: German)';
UPDATE zones z SET description_de = v.de FROM (VALUES
 ('de_fixed',      'Deutschland, Festnetz'),
 ('de_mobile',     'Deutschland, Mobilfunknetze'),
 ('de_masscall',   'Deutschland, 0137 Massenverkehrsrufnummern'),
 ('de_service',    'Deutschland, 0180 Servicerufnummern'),
 ('de_premium',    'Deutschland, 0900 Premium-Dienste'),
 ('de_special',    'Deutschland, weitere Sonderrufnummern (0118 Auskunft, 0700, 032)'),
 ('de_freephone',  'Deutschland, 0800 kostenfreie Rufnummern und harmonisierte Dienste 116xxx'),
 ('de_public',     'Deutschland, 115 Behördenrufnummer'),
 ('de_callbycall', 'Deutschland, 010xx Call-by-Call (Betreiberauswahl)'),
 ('de_innovative', 'Deutschland, 012 innovative Dienste'),
 ('eu_fixed',      'Europa, Festnetz'),
 ('eu_mobile',     'Europa, Mobilfunknetze'),
 ('world',         'übrige Welt'),
 ('satellite',     'Satelliten- und andere hochpreisige Netze')
) AS v(code, de) WHERE z.code = v.code;

-- a row this migration does not know (added since 0021) keeps its English
-- name until it gets a German one (the tests list any such row); from now
-- on every option and zone is added with both
UPDATE plan_options SET description_de = description WHERE description_de IS NULL;
UPDATE zones SET description_de = description WHERE description_de IS NULL;
ALTER TABLE plan_options ALTER COLUMN description_de SET NOT NULL;
ALTER TABLE zones ALTER COLUMN description_de SET NOT NULL;

-- Issue 31.19: a SEPA mandate reference (MndtId, EPC AT-01) is the EPC's
-- restricted identifier (its pain.008 schema's RestrictedIdentificationSEPA2:
-- A-Z a-z 0-9 / - ? : ( ) . , ' + and no space, unlike a message or
-- end-to-end id), 1 to 35 characters, never starting or ending with '/' nor
-- holding '//' (the EPC's rule for every reference and identifier); and
-- banks compare it without case.  billing/sepa.py: mandate_reference says
-- the same with a message.  Mandates filed before keep their reference
-- (NOT VALID: it was signed so); sepa export refuses one that breaks the rule.
ALTER TABLE sepa_mandates DROP CONSTRAINT sepa_mandates_reference_check;
ALTER TABLE sepa_mandates ADD CONSTRAINT sepa_mandates_reference_check
    CHECK (reference ~ '^[A-Za-z0-9/?:().,''+-]{1,35}$' AND reference !~ '^/|/$|//') NOT VALID;
CREATE UNIQUE INDEX sepa_mandates_reference_nocase ON sepa_mandates (upper(reference));
