-- Version 2: single-use assertion ids (RFC 7523 section 3, item 7) shared by the replicas,
-- so an assertion accepted at one is refused at every other until it expires.

-- key: oauth::replay::replay_key(issuer, jti), a SHA-256 of both; the raw jti (from the
-- network, of any length) is never stored. expires: the assertion's exp, after which the
-- id may come again (the assertion itself is refused as expired by then).
CREATE TABLE jwt_issuer_used_jtis (
    key     bytea PRIMARY KEY,
    expires timestamptz NOT NULL
);
-- The sweep deletes expired rows a bounded batch at a time.
CREATE INDEX jwt_issuer_used_jtis_expires ON jwt_issuer_used_jtis (expires);
