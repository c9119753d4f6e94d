//! The minidumps and kept cores the crash history's reports name (`run --dumps`,
//! `--keep-cores`): a file goes when its report goes (by count per cluster, age or size: a
//! trigger notes its path), and each cluster keeps at most [`PER_CLUSTER`] of each kind, its
//! first and its latest, as systemd-coredump keeps cores. The files are removed by the
//! store's thread after each transaction, and only files of the dumps directory.
use std::path::{Path, PathBuf};

use anyhow::Result;
use rusqlite::{params, Connection, Transaction};

/// Minidumps kept per cluster: the first and the latest `PER_CLUSTER - 1`.
pub const PER_CLUSTER: i64 = 5;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS report_dumps (
    report INTEGER PRIMARY KEY,
    cluster INTEGER NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS report_dumps_by_cluster ON report_dumps(cluster, report);
CREATE TABLE IF NOT EXISTS report_cores (
    report INTEGER PRIMARY KEY,
    cluster INTEGER NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS report_cores_by_cluster ON report_cores(cluster, report);
CREATE TABLE IF NOT EXISTS dumps_gone (path TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS a_reports_dump_goes_with_it AFTER DELETE ON reports BEGIN
    INSERT INTO dumps_gone SELECT path FROM report_dumps WHERE report = OLD.id;
    DELETE FROM report_dumps WHERE report = OLD.id;
END;
CREATE TRIGGER IF NOT EXISTS a_reports_core_goes_with_it AFTER DELETE ON reports BEGIN
    INSERT INTO dumps_gone SELECT path FROM report_cores WHERE report = OLD.id;
    DELETE FROM report_cores WHERE report = OLD.id;
END;
";

/// Which file of a report.
#[derive(Clone, Copy)]
pub enum Kind {
    Minidump,
    Core,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Minidump => "report_dumps",
            Kind::Core => "report_cores",
        }
    }
}

/// Notes a file of the report just inserted, and lets a cluster's middle ones go.
pub fn note(tx: &Transaction, kind: Kind, report: i64, cluster: i64, path: &str) -> Result<()> {
    let t = kind.table();
    tx.execute(
        &format!("INSERT OR REPLACE INTO {t} (report, cluster, path) VALUES (?1, ?2, ?3)"),
        params![report, cluster, path],
    )?;
    let n: i64 = tx.query_row(
        &format!("SELECT COUNT(*) FROM {t} WHERE cluster = ?1"),
        params![cluster],
        |r| r.get(0),
    )?;
    if n > PER_CLUSTER {
        // All but the first and the latest PER_CLUSTER - 1.
        let gone = format!(
            "report IN (SELECT report FROM {t} WHERE cluster = ?1
               AND report > (SELECT MIN(report) FROM {t} WHERE cluster = ?1)
               ORDER BY report DESC LIMIT -1 OFFSET ?2)"
        );
        tx.execute(
            &format!("INSERT INTO dumps_gone SELECT path FROM {t} WHERE {gone}"),
            params![cluster, PER_CLUSTER - 1],
        )?;
        tx.execute(
            &format!("DELETE FROM {t} WHERE {gone}"),
            params![cluster, PER_CLUSTER - 1],
        )?;
    }
    Ok(())
}

/// Removes the files noted as gone; how many.
pub fn sweep(conn: &Connection, dir: &Path) -> Result<u64> {
    let paths: Vec<String> = conn
        .prepare("SELECT path FROM dumps_gone")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if paths.is_empty() {
        return Ok(0);
    }
    let mut removed = 0;
    for p in paths.iter().map(PathBuf::from) {
        // Only the dumps directory's own files, whatever a row says.
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours =
            p.parent() == Some(dir) && (name.ends_with(".dmp") || name.ends_with(".core.zst"));
        if ours && std::fs::remove_file(&p).is_ok() {
            removed += 1;
        }
    }
    conn.execute("DELETE FROM dumps_gone", [])?;
    Ok(removed)
}
