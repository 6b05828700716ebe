-- The period's billable calls made before each plan change, stored in the change's own row (and
-- transaction): the invoice splits the month's calls between plans at exactly this count. NULL
-- for rows written before this column existed (and for the registration row, which no call
-- precedes); billing then reads the old snapshot field of the usage ledger, or estimates.
-- A new column takes the table's privileges and row-level security as they are (0003).
ALTER TABLE tg_plan_changes ADD COLUMN calls_before bigint CHECK (calls_before >= 0);
