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

ALTER TABLE tg_tenants OWNER TO tenant_gateway_owner;
ALTER TABLE tg_users OWNER TO tenant_gateway_owner;
ALTER TABLE tg_api_keys OWNER TO tenant_gateway_owner;
ALTER TABLE tg_plan_changes OWNER TO tenant_gateway_owner;

ALTER TABLE tg_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tg_tenants
    USING (id = (SELECT current_setting('tenant_gateway.tenant_id', true)))
    WITH CHECK (id = (SELECT current_setting('tenant_gateway.tenant_id', true)));
CREATE POLICY gateway_service ON tg_tenants TO tenant_gateway_owner USING (true) WITH CHECK (true);

ALTER TABLE tg_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tg_users
    USING (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)));
CREATE POLICY gateway_service ON tg_users TO tenant_gateway_owner USING (true) WITH CHECK (true);

ALTER TABLE tg_api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tg_api_keys
    USING (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)));
CREATE POLICY gateway_service ON tg_api_keys TO tenant_gateway_owner USING (true) WITH CHECK (true);

ALTER TABLE tg_plan_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_plan_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tg_plan_changes
    USING (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)));
CREATE POLICY gateway_service ON tg_plan_changes TO tenant_gateway_owner USING (true) WITH CHECK (true);

REVOKE ALL ON tg_tenants, tg_users, tg_api_keys, tg_plan_changes FROM PUBLIC;

-- A key digest need not be unique across tenants to be found (192 random bits do not collide),
-- and a cross-tenant unique constraint would be the only one without tenant_id.
ALTER TABLE tg_api_keys DROP CONSTRAINT tg_api_keys_key_hash_key;
CREATE INDEX tg_api_keys_key_hash ON tg_api_keys (key_hash);
