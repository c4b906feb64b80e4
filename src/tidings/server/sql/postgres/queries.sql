-- tidings serve's API key statements (postgres; tidings.server.keys_db). The other dialect's file
-- has the same names.

-- name: list_keys
SELECT id, name, sha256, prefix, scopes, created_at FROM tidings_api_keys ORDER BY name

-- name: insert_key
INSERT INTO tidings_api_keys (id, name, sha256, prefix, scopes, created_at)
VALUES (%s, %s, %s, %s, %s, %s)

-- name: delete_key
DELETE FROM tidings_api_keys WHERE id = %s
