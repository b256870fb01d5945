-- Issue 13 (F-07): uploaded audio — hold music files of a class, and the
-- sound logo of a tenant or of one number — converted to mono 16-bit WAV at
-- every rate the engines play (see provisioning/media.py); a row per file,
-- with the checksum of what was uploaded and of what was written.  A sound
-- logo is kind 'logo' of class 'tenant' (every number) or of one number
-- (its digits): played to the caller before the call is put through.
CREATE TABLE media_files (
    id          bigserial PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('moh', 'logo')),
    class       text NOT NULL CHECK (class ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),   -- moh: the class; logo: 'tenant' or the number's digits
    name        text NOT NULL CHECK (name ~ '^[0-9a-f]{16}$'),                 -- the file name: sha256 of the upload, 16 hex
    source_sha256 text NOT NULL CHECK (source_sha256 ~ '^[0-9a-f]{64}$'),
    wav_sha256  jsonb NOT NULL,                                                -- rate -> sha256 of the written WAV
    seconds     numeric(8, 2) NOT NULL CHECK (seconds > 0),
    source_bytes bigint NOT NULL CHECK (source_bytes > 0),
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, kind, class, name)
);


-- one rule for hold music classes and uploaded media (plans.own_hold_music):
-- the moh_classes trigger's function, the field to name as its argument
CREATE OR REPLACE FUNCTION dustel_moh_classes_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT p.own_hold_music FROM tenants t JOIN plans p ON p.code = t.plan WHERE t.id = NEW.tenant_id) THEN
        PERFORM dustel_refuse(coalesce(TG_ARGV[0], 'moh_class')
                              || ': hold music and sound logos of their own need business flex');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER media_files_check BEFORE INSERT ON media_files
    FOR EACH ROW EXECUTE FUNCTION dustel_moh_classes_check('tenant');
