-- How each quota event's webhook delivery ended, for the tenant's "last deliveries" view:
-- delivered, failed (every attempt failed), dropped (the target was refused), no_webhook (none
-- was set when the event fired). NULL while the delivery is pending or was abandoned at shutdown.
-- The outbox's attempts, last_error and (when delivered) delivered_at columns (0005) are filled
-- in alongside; finished_at is when the outcome was known, whatever it is.
ALTER TABLE tg_usage_events ADD COLUMN outcome text
    CHECK (outcome IN ('delivered', 'failed', 'dropped', 'no_webhook'));
ALTER TABLE tg_usage_events ADD COLUMN finished_at timestamptz;
CREATE INDEX tg_usage_events_recent ON tg_usage_events (tenant_id, created_at DESC);
