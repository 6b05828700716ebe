-- The role the wrapped app's tenant transactions run under (SET LOCAL ROLE): not superuser,
-- not BYPASSRLS, owns nothing, so row-level security applies to it even when the gateway
-- logs in as a superuser. Roles are cluster-wide: create it once, tolerate a concurrent creator.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenant_gateway_app') THEN
        CREATE ROLE tenant_gateway_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO tenant_gateway_app;
DO $$
BEGIN
    EXECUTE format('GRANT tenant_gateway_app TO %I', current_user);
EXCEPTION WHEN others THEN
    NULL;  -- a superuser may SET ROLE to anything already
END
$$;
