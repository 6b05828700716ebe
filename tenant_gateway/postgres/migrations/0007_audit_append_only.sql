-- The audit trail is append-only. The gateway writes an entry in the transaction of the change
-- it records, as tenant_gateway_owner; the app's runtime role tenant_gateway_app has no
-- privilege on tg_audit at all (0003). Neither role may rewrite history: UPDATE, DELETE and
-- TRUNCATE are revoked from both, and a trigger refuses them for every role, the table's owner
-- and a superuser login included (only an explicit ALTER TABLE … DISABLE TRIGGER gets past it).
REVOKE UPDATE, DELETE, TRUNCATE ON tg_audit FROM tenant_gateway_owner, tenant_gateway_app;

CREATE FUNCTION tg_audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'tg_audit is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER tg_audit_append_only BEFORE UPDATE OR DELETE ON tg_audit
    FOR EACH ROW EXECUTE FUNCTION tg_audit_refuse_change();
CREATE TRIGGER tg_audit_no_truncate BEFORE TRUNCATE ON tg_audit
    FOR EACH STATEMENT EXECUTE FUNCTION tg_audit_refuse_change();
