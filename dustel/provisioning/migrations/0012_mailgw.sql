-- Issue 14: wrong fax box PINs in mails to the fax gateway, per sender: five
-- within 15 minutes lock that sender out for 15 minutes.
CREATE TABLE mailgw_pin_failures (
    sender text NOT NULL,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mailgw_pin_failures_sender ON mailgw_pin_failures (sender, at);
