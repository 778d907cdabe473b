//! PostgreSQL client TLS with libpq sslmode semantics.
