-- Version 4: keys held in a vault (a PKCS#11 token). Such a row has no ciphertext: it
-- names where the private key is, by a PKCS#11 URI (RFC 7512), and keeps naming it once
-- removed or revoked (the object is destroyed in the token).
ALTER TABLE jwt_issuer_keys ADD COLUMN uri text;
ALTER TABLE jwt_issuer_keys ADD CONSTRAINT jwt_issuer_keys_held_or_sealed
    CHECK (uri IS NULL OR ciphertext IS NULL);
