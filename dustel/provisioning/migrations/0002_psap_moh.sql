-- depends: 0001_base
-- Emergency routing (F-04) and hold-music classes (F-07).

-- The route prefix the carrier expects in front of 110/112 for calls that
-- originate in an area; areas without a row use '0' || area_code.
CREATE TABLE psaps (
    area_code    text PRIMARY KEY CHECK (area_code ~ '^[2-9][0-9]{1,4}$'),
    name         text NOT NULL,
    route_prefix text NOT NULL CHECK (route_prefix ~ '^[0-9]{1,12}$')
);
INSERT INTO psaps VALUES
 ('30',  'Berlin',      '03011'),
 ('40',  'Hamburg',     '04011'),
 ('69',  'Frankfurt',   '06911'),
 ('89',  'München',     '08911'),
 ('211', 'Düsseldorf',  '021111'),
 ('221', 'Köln',        '022111'),
 ('711', 'Stuttgart',   '071111');

CREATE FUNCTION dustel_psap_prefix(area text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT route_prefix FROM psaps WHERE area_code = area), '0' || coalesce(area, ''))
$$;

-- Hold music classes of a tenant (business flex may upload their own);
-- 'default' exists for everyone and is not stored.
CREATE TABLE moh_classes (
    tenant_id bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name      text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,39}$' AND name <> 'default'),
    PRIMARY KEY (tenant_id, name)
);

CREATE FUNCTION dustel_moh_classes_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT p.own_hold_music FROM tenants t JOIN plans p ON p.code = t.plan WHERE t.id = NEW.tenant_id) THEN
        PERFORM dustel_refuse('moh_class: hold music of their own needs business flex');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER moh_classes_check BEFORE INSERT ON moh_classes
    FOR EACH ROW EXECUTE FUNCTION dustel_moh_classes_check();
