-- tidings serve's API keys made through the API, SQLite schema 001 (component `server`).
-- Applied by `tidings migrate URL` and when `tidings serve` opens its key store. Only the
-- SHA-256 of a key is kept (keys are 256 random bits, so a plain digest cannot be reversed by
-- guessing); `prefix` is the key's first characters, to tell keys apart in a listing.
-- scopes: space-separated, from read, publish, admin. Times are epoch seconds (REAL).
CREATE TABLE IF NOT EXISTS tidings_api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    sha256     TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    created_at REAL NOT NULL
);
