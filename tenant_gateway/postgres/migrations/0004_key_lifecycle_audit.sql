-- Key lifecycle (last use, flushed in batches, never per request) and the audit trail.
ALTER TABLE tg_api_keys ADD COLUMN last_used_at timestamptz;
ALTER TABLE tg_tenants ADD COLUMN deleted_at timestamptz;

CREATE TABLE tg_audit (
    tenant_id text NOT NULL REFERENCES tg_tenants (id) ON DELETE CASCADE,
    id        bigint GENERATED ALWAYS AS IDENTITY,
    at        timestamptz NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text,
    ip        text,
    PRIMARY KEY (tenant_id, id)
);
SELECT tg_isolate_gateway_table('tg_audit', 'tenant_id');
