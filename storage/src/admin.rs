//! Databases made and dropped whole: the benchmark's per-system databases and the test kit's
//! per-test ones. Names cannot be bind parameters in `create database`, so they are quoted as
//! identifiers here, in one place.

use sqlx::PgExecutor;

/// `name` as a quoted SQL identifier (`"a""b"` for `a"b`).
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the database `name`, cloned from `template` when one is given.
pub async fn create_database(
    db: impl PgExecutor<'_>,
    name: &str,
    template: Option<&str>,
) -> sqlx::Result<()> {
    let template = template
        .map(|t| format!(" template {}", quote_identifier(t)))
        .unwrap_or_default();
    let statement = format!("create database {}{template}", quote_identifier(name));
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(db)
        .await?;
    Ok(())
}

/// Drops the database `name` if it exists, ending whatever is still connected to it.
pub async fn drop_database(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<()> {
    let statement = format!(
        "drop database if exists {} with (force)",
        quote_identifier(name)
    );
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(db)
        .await?;
    Ok(())
}

/// The server settings that change what a benchmark's figures mean, as `name=value` pairs in a
/// fixed order: whether autovacuum runs (without it no statistics are refreshed and no dead row
/// is reclaimed during a run), how commits reach the disk, and the memory PostgreSQL caches in.
pub async fn benchmark_settings(db: impl PgExecutor<'_>) -> sqlx::Result<String> {
    sqlx::query_scalar(
        "select string_agg(name || '=' || current_setting(name), ', ' order by name)
           from pg_settings
          where name in ('autovacuum', 'fsync', 'synchronous_commit', 'shared_buffers',
                         'max_connections', 'wal_level')",
    )
    .fetch_one(db)
    .await
}

/// PostgreSQL's `version()` string.
pub async fn server_version(db: impl PgExecutor<'_>) -> sqlx::Result<String> {
    sqlx::query_scalar!(r#"select version() as "v!""#)
        .fetch_one(db)
        .await
}

#[cfg(test)]
mod tests {
    use super::quote_identifier;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_identifier("perf_1"), "\"perf_1\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
