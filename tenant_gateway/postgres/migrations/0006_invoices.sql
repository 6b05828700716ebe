-- Issued invoices, stored as the exact JSON document served, so they never change.
CREATE SEQUENCE tg_invoice_number_seq;
CREATE TABLE tg_invoices (
    tenant_id text NOT NULL,
    period    text NOT NULL CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),
    number    bigint NOT NULL,
    issued_at timestamptz NOT NULL,
    document  text NOT NULL,
    PRIMARY KEY (tenant_id, period)
);
ALTER SEQUENCE tg_invoice_number_seq OWNER TO tenant_gateway_owner;
SELECT tg_isolate_gateway_table('tg_invoices', 'tenant_id');
