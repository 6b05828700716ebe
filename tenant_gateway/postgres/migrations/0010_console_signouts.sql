-- Console sessions ended by signing out, kept until they would have expired anyway: a copy of
-- the cookie is refused by every process. Only the gateway's own role reads or writes it.
CREATE TABLE tg_console_signouts (
    nonce      text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX tg_console_signouts_expiry ON tg_console_signouts (expires_at);
ALTER TABLE tg_console_signouts OWNER TO tenant_gateway_owner;
ALTER TABLE tg_console_signouts ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_console_signouts FORCE ROW LEVEL SECURITY;
CREATE POLICY gateway_service ON tg_console_signouts TO tenant_gateway_owner
    USING (true) WITH CHECK (true);
REVOKE ALL ON tg_console_signouts FROM PUBLIC;
