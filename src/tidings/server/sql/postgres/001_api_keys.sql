-- tidings serve's API keys made through the API, PostgreSQL schema 001 (component `server`).
-- Applied by `tidings migrate URL` and when `tidings serve` opens its key store. Only the
-- SHA-256 of a key is kept (keys are 256 random bits, so a plain digest cannot be reversed by
-- guessing); `prefix` is the key's first characters, to tell keys apart in a listing.
-- scopes: space-separated, from read, publish, admin.
CREATE TABLE IF NOT EXISTS tidings_api_keys (
    id         text PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    sha256     text NOT NULL UNIQUE,
    prefix     text NOT NULL,
    scopes     text NOT NULL,
    created_at double precision NOT NULL
);
