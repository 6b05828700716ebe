-- Row-level security for the gateway's own tables.
--
-- tenant_gateway_owner (NOLOGIN) owns the tables. FORCE ROW LEVEL SECURITY subjects even the
-- owner to the policies; the owner's own policy (gateway_service) lets the gateway's internal
-- queries — key lookup by hash, registration, operator listings — see every tenant. Those run
-- under SET LOCAL ROLE tenant_gateway_owner. The runtime role tenant_gateway_app is not a member
-- of the owner role and gets no privilege on these tables at all.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenant_gateway_owner') THEN
        CREATE ROLE tenant_gateway_owner NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
DO $$
BEGIN
    EXECUTE format('GRANT tenant_gateway_owner TO %I', current_user);
EXCEPTION WHEN others THEN
    NULL;  -- already a member, or a superuser who can SET ROLE to anything
END
$$;
GRANT USAGE, CREATE ON SCHEMA public TO tenant_gateway_owner;

-- One definition of "a gateway table under isolation", used by this and later migrations:
-- owned by tenant_gateway_owner, ENABLE + FORCE row-level security, the tenant_isolation
-- policy (USING and WITH CHECK against the tenant context, read once per statement), the
-- owner's gateway_service policy, and nothing granted to PUBLIC.
CREATE FUNCTION tg_isolate_gateway_table(tbl regclass, tenant_column name) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    condition text := format(
        '%I = (SELECT current_setting(''tenant_gateway.tenant_id'', true))', tenant_column);
BEGIN
    EXECUTE format('ALTER TABLE %s OWNER TO tenant_gateway_owner', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format('CREATE POLICY tenant_isolation ON %s USING (%s) WITH CHECK (%s)',
                   tbl, condition, condition);
    EXECUTE format('CREATE POLICY gateway_service ON %s TO tenant_gateway_owner'
                   ' USING (true) WITH CHECK (true)', tbl);
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', tbl);
END
$fn$;

SELECT tg_isolate_gateway_table('tg_tenants', 'id');
SELECT tg_isolate_gateway_table('tg_users', 'tenant_id');
SELECT tg_isolate_gateway_table('tg_api_keys', 'tenant_id');
SELECT tg_isolate_gateway_table('tg_plan_changes', 'tenant_id');


-- A key digest need not be unique across tenants to be found (192 random bits do not collide),
-- and a cross-tenant unique constraint would be the only one without tenant_id.
ALTER TABLE tg_api_keys DROP CONSTRAINT tg_api_keys_key_hash_key;
CREATE INDEX tg_api_keys_key_hash ON tg_api_keys (key_hash);
