//! `SqlStore`: the MetaStore over sqlx for SQLite and PostgreSQL (being written; lands next).
