//! The database schema and its migrations, applied in order at open time.
//!
//! SQLite's `user_version` holds how many migrations have run. A migration is only ever
//! appended, never edited: a store written by an older build upgrades in place.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: images, captures, feedback, imports.
    "
    CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        file   TEXT NOT NULL,
        bytes  INTEGER NOT NULL
    );
    CREATE TABLE imports (
        id          INTEGER PRIMARY KEY,
        file        TEXT NOT NULL,
        file_sha256 TEXT NOT NULL,
        time        TEXT NOT NULL,
        added       INTEGER NOT NULL,
        skipped     INTEGER NOT NULL,
        rejected    INTEGER NOT NULL
    );
    CREATE TABLE captures (
        id            INTEGER PRIMARY KEY,
        device        TEXT NOT NULL,
        seq           INTEGER,
        image_sha256  TEXT NOT NULL REFERENCES images(sha256),
        width         INTEGER NOT NULL,
        height        INTEGER NOT NULL,
        model_version TEXT NOT NULL,
        model_score   REAL NOT NULL,
        model_face    INTEGER NOT NULL,
        model_x1 REAL, model_y1 REAL, model_x2 REAL, model_y2 REAL,
        time_ms       INTEGER NOT NULL,
        reason        TEXT,
        source        TEXT NOT NULL,
        UNIQUE (device, seq)
    );
    CREATE INDEX captures_score ON captures (model_score);
    CREATE TABLE feedback (
        id         INTEGER PRIMARY KEY,
        capture_id INTEGER NOT NULL REFERENCES captures(id),
        no_face    INTEGER NOT NULL,
        x1 REAL, y1 REAL, x2 REAL, y2 REAL,
        rating     INTEGER NOT NULL CHECK (rating BETWEEN 0 AND 5),
        comment    TEXT NOT NULL,
        reviewer   TEXT NOT NULL,
        time       TEXT NOT NULL,
        import_id  INTEGER REFERENCES imports(id),
        import_key TEXT UNIQUE,
        CHECK (no_face = 1 OR (x1 IS NOT NULL AND y1 IS NOT NULL
                               AND x2 IS NOT NULL AND y2 IS NOT NULL))
    );
    CREATE INDEX feedback_capture ON feedback (capture_id, id);
    ",
];

/// The schema version this build writes.
pub const VERSION: usize = MIGRATIONS.len();

/// Brings the database up to [`VERSION`], each step in its own transaction.
///
/// Returns the version found before migrating; a database newer than this build is
/// reported as `Err(found)` and left untouched.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<usize, usize>> {
    let found: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Ok(Err(found));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "feedback store schema migrated");
    }
    Ok(Ok(found))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), Ok(0));
        assert_eq!(migrate(&mut conn).unwrap(), Ok(VERSION));
        let n: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", VERSION + 1).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), Err(VERSION + 1));
    }
}
