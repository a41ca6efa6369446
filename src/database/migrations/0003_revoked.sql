-- Version 3: revoked tokens (RFC 7009) shared by the replicas, kept until each token's exp.

-- jti: the revoked token's id (from a token this issuer signed, so of a bounded length).
-- expires: the token's exp; from then on the row is swept, the token being refused as
-- expired anyway.
CREATE TABLE jwt_issuer_revoked (
    jti     text PRIMARY KEY,
    expires timestamptz NOT NULL
);
-- Loads read the unexpired rows; sweeps delete the expired ones a bounded batch at a time.
CREATE INDEX jwt_issuer_revoked_expires ON jwt_issuer_revoked (expires);

-- Its own counter, so a revocation reloads the revocation lists and not the keys or the
-- clients. Rows written by an older jwt-issuer keep their counters.
ALTER TABLE jwt_issuer_versions ADD COLUMN revoked bigint NOT NULL DEFAULT 0;

-- As version 1's, the keys and the clients unchanged, with a branch for the new table.
CREATE OR REPLACE FUNCTION jwt_issuer_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'jwt_issuer_keys' THEN
        UPDATE jwt_issuer_versions SET keys = keys + 1;
    ELSIF TG_TABLE_NAME = 'jwt_issuer_revoked' THEN
        UPDATE jwt_issuer_versions SET revoked = revoked + 1;
    ELSE
        UPDATE jwt_issuer_versions SET clients = clients + 1;
    END IF;
    PERFORM pg_notify('jwt_issuer_changes', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER jwt_issuer_revoked_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON jwt_issuer_revoked
    FOR EACH STATEMENT EXECUTE FUNCTION jwt_issuer_changed();
