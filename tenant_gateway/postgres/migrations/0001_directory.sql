-- Tenants, their users and their API keys (secrets never stored: SHA-256 digests only).
CREATE TABLE tg_tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    plan        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
    max_users   integer CHECK (max_users > 0),
    admin_email text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE tg_users (
    tenant_id  text NOT NULL REFERENCES tg_tenants (id) ON DELETE CASCADE,
    id         text NOT NULL,
    email      text NOT NULL,
    role       text NOT NULL CHECK (role IN ('admin', 'developer', 'viewer', 'billing')),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX tg_users_email ON tg_users (tenant_id, lower(email));

CREATE TABLE tg_api_keys (
    tenant_id  text NOT NULL REFERENCES tg_tenants (id) ON DELETE CASCADE,
    id         text NOT NULL,
    key_hash   bytea NOT NULL UNIQUE,
    prefix     text NOT NULL,
    name       text,
    role       text NOT NULL CHECK (role IN ('admin', 'developer', 'viewer', 'billing')),
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);

-- Every plan a tenant has had, for proration (billing reads the segments).
CREATE TABLE tg_plan_changes (
    tenant_id  text NOT NULL REFERENCES tg_tenants (id) ON DELETE CASCADE,
    id         bigint GENERATED ALWAYS AS IDENTITY,
    from_plan  text,
    to_plan    text NOT NULL,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
