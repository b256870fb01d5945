-- depends: 0021_plan_periods
-- Issue 27: the tables the SIP edge (Kamailio 5.6) reads and writes, in a
-- schema of their own (Kamailio names them without a schema: its database
-- role has search_path = kamailio, README Cluster).  dustel owns them:
--   subscriber  a VIEW of the SIP accounts: username, the tenant's domain (the
--               digest realm) and the HA1 — no password column, none exists
--   dispatcher  the engine nodes, written by `dustel render` from the settings
--   address     the carrier's networks (carrier_match), written likewise
--   location    usrloc's registrations (db_mode write-through: a restarted
--               Kamailio loads them again)
--   version     the table versions Kamailio checks at start (5.6's schema)

CREATE SCHEMA kamailio;

CREATE TABLE kamailio.version (
    id            serial PRIMARY KEY,
    table_name    varchar(32) NOT NULL UNIQUE,
    table_version integer NOT NULL DEFAULT 0
);
INSERT INTO kamailio.version (table_name, table_version)
VALUES ('version', 1), ('location', 9), ('location_attrs', 1), ('subscriber', 7), ('dispatcher', 4),
       ('address', 6);

CREATE VIEW kamailio.subscriber AS
SELECT a.id, a.username, t.sip_domain AS domain, a.ha1, ''::text AS ha1b
FROM sip_accounts a JOIN tenants t ON t.id = a.tenant_id;

CREATE TABLE kamailio.dispatcher (
    id          serial PRIMARY KEY,
    setid       integer NOT NULL DEFAULT 0,
    destination varchar(192) NOT NULL DEFAULT '',
    flags       integer NOT NULL DEFAULT 0,
    priority    integer NOT NULL DEFAULT 0,
    attrs       varchar(128) NOT NULL DEFAULT '',
    description varchar(64) NOT NULL DEFAULT '',
    UNIQUE (setid, destination)
);

CREATE TABLE kamailio.address (
    id      serial PRIMARY KEY,
    grp     integer NOT NULL DEFAULT 1,
    ip_addr varchar(50) NOT NULL,
    mask    integer NOT NULL DEFAULT 32,
    port    smallint NOT NULL DEFAULT 0,
    tag     varchar(64),
    UNIQUE (grp, ip_addr, mask, port)
);

CREATE TABLE kamailio.location (
    id             serial PRIMARY KEY,
    ruid           varchar(64) NOT NULL DEFAULT '' UNIQUE,
    username       varchar(64) NOT NULL DEFAULT '',
    domain         varchar(64),
    contact        varchar(512) NOT NULL DEFAULT '',
    received       varchar(128),
    path           varchar(512),
    expires        timestamp NOT NULL DEFAULT '2030-05-28 21:32:15',
    q              real NOT NULL DEFAULT 1.0,
    callid         varchar(255) NOT NULL DEFAULT 'Default-Call-ID',
    cseq           integer NOT NULL DEFAULT 1,
    last_modified  timestamp NOT NULL DEFAULT '2000-01-01 00:00:01',
    flags          integer NOT NULL DEFAULT 0,
    cflags         integer NOT NULL DEFAULT 0,
    user_agent     varchar(255) NOT NULL DEFAULT '',
    socket         varchar(64),
    methods        integer,
    instance       varchar(255),
    reg_id         integer NOT NULL DEFAULT 0,
    server_id      integer NOT NULL DEFAULT 0,
    connection_id  integer NOT NULL DEFAULT 0,
    keepalive      integer NOT NULL DEFAULT 0,
    partition      integer NOT NULL DEFAULT 0
);
CREATE INDEX location_account_contact_idx ON kamailio.location (username, domain, contact);
CREATE INDEX location_expires_idx ON kamailio.location (expires);
CREATE INDEX location_connection_idx ON kamailio.location (server_id, connection_id);

CREATE TABLE kamailio.location_attrs (
    id            serial PRIMARY KEY,
    ruid          varchar(64) NOT NULL DEFAULT '',
    username      varchar(64) NOT NULL DEFAULT '',
    domain        varchar(64),
    aname         varchar(64) NOT NULL DEFAULT '',
    atype         integer NOT NULL DEFAULT 0,
    avalue        varchar(512) NOT NULL DEFAULT '',
    last_modified timestamp NOT NULL DEFAULT '2000-01-01 00:00:01'
);
CREATE INDEX location_attrs_account_record_idx ON kamailio.location_attrs (username, domain, ruid);
