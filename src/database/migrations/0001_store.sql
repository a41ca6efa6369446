-- The PostgreSQL store, version 1: keys (lifecycle in clear, private keys sealed under
-- the KEK), clients, the change counters replicas poll, and shared failure counts.

CREATE TABLE jwt_issuer_keys (
    kid          text PRIMARY KEY,
    position     integer NOT NULL,
    alg          text NOT NULL CHECK (alg IN ('ES256', 'RS256')),
    state        text NOT NULL CHECK (state IN ('next', 'active', 'retired', 'removed', 'revoked')),
    created      timestamptz NOT NULL,
    published    timestamptz NOT NULL,
    activated    timestamptz,
    retired      timestamptz,
    remove_after timestamptz,
    removed      timestamptz,
    -- The private key, AES-256-GCM under the KEK named by kek_id, the kid and alg bound
    -- as associated data. Gone once the key is removed or revoked.
    kek_id       text,
    nonce        bytea,
    ciphertext   bytea,
    CHECK ((kek_id IS NULL) = (ciphertext IS NULL) AND (nonce IS NULL) = (ciphertext IS NULL)),
    CHECK (ciphertext IS NULL OR state NOT IN ('removed', 'revoked')),
    -- One active key per algorithm, checked at commit: a rotation moves two rows.
    CONSTRAINT jwt_issuer_one_active_key_per_alg
        EXCLUDE USING btree (alg WITH =) WHERE (state = 'active') DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE jwt_issuer_clients (
    client_id text PRIMARY KEY,
    -- The registry entry as clients.json holds it (hashed secret, scopes, audiences, ...).
    entry     jsonb NOT NULL
);

-- Moved by every statement that writes jwt_issuer_keys or jwt_issuer_clients (the
-- triggers below), in its transaction, whoever writes: jwt-issuer or an operator with SQL.
-- Replicas poll it, and the NOTIFY on channel jwt_issuer_changes (delivered at commit)
-- tells them at once.
CREATE TABLE jwt_issuer_versions (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    keys      bigint NOT NULL DEFAULT 0,
    clients   bigint NOT NULL DEFAULT 0
);
INSERT INTO jwt_issuer_versions DEFAULT VALUES;

CREATE FUNCTION jwt_issuer_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'jwt_issuer_keys' THEN
        UPDATE jwt_issuer_versions SET keys = keys + 1;
    ELSE
        UPDATE jwt_issuer_versions SET clients = clients + 1;
    END IF;
    PERFORM pg_notify('jwt_issuer_changes', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER jwt_issuer_keys_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON jwt_issuer_keys
    FOR EACH STATEMENT EXECUTE FUNCTION jwt_issuer_changed();
CREATE TRIGGER jwt_issuer_clients_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON jwt_issuer_clients
    FOR EACH STATEMENT EXECUTE FUNCTION jwt_issuer_changed();

-- Failed client authentications per client id or address, shared by the replicas so
-- that N replicas do not give N times the attempts. Successes never write here.
CREATE TABLE jwt_issuer_auth_failures (
    subject      text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    failures     integer NOT NULL
);
