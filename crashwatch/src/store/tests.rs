//! The store on a real SQLite file in a directory of the test's own.
use std::{fs, os::unix::fs::PermissionsExt};

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("crashwatch-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn keep() -> Retention {
    Retention {
        per_cluster: 3,
        max_age: Duration::from_secs(3600),
        max_bytes: 1 << 30,
    }
}

fn write(id: i64, count: u64, t: u64, ns: Option<&str>) -> Item {
    Item::Report(Box::new(report(id, count, t, ns)))
}

fn report(id: i64, count: u64, t: u64, ns: Option<&str>) -> Write {
    Write {
        cluster: Cluster {
            id,
            fingerprint: format!("v1:{id:016x}"),
            kind: "signal".into(),
            headline: "SIGSEGV (SEGV_MAPERR)".into(),
            top_frame: "null_write".into(),
            count,
            first_seen_ns: t,
            last_seen_ns: t,
            ..Cluster::default()
        },
        facts: Facts {
            exe: Some("/bin/crasher".into()),
            namespace: ns.map(str::to_string),
            pod: ns.map(|_| "web-1".to_string()),
            ..Facts::default()
        },
        json: format!(r#"{{"n":{count}}}"#),
    }
}

fn filter() -> Filter {
    Filter {
        limit: 100,
        loop_count: 3,
        loop_window_ns: 600_000_000_000,
        ..Filter::default()
    }
}

#[test]
fn clusters_and_their_latest_reports_survive_a_reopen() {
    let d = Dir::new("reopen");
    let now = now_ns();
    {
        let mut s = Store::open(&d.0).unwrap();
        for n in 1..=5 {
            s.insert(&[write(1, n, now + n, None)], &keep()).unwrap();
        }
        s.insert(&[write(2, 1, now + 10, Some("shop"))], &keep())
            .unwrap();
    }
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.0), 0o700);
    assert_eq!(mode(&d.0.join(FILE)), 0o600);
    let s = Store::open_read(&d.0).unwrap();
    let known = s.clusters().unwrap();
    assert_eq!(known.len(), 2);
    assert_eq!(known.iter().find(|c| c.id == 1).unwrap().count, 5);
    let list = s.list(&filter()).unwrap();
    assert_eq!(list.iter().map(|c| c.id).collect::<Vec<_>>(), [2, 1]);
    assert!(list[1].looping, "5 crashes within the window");
    assert_eq!(list[0].pods, ["shop/web-1"]);
    let (row, reports) = s.cluster(1, 10, &filter()).unwrap().unwrap();
    assert_eq!(row.count, 5);
    // Three kept per cluster, newest first.
    assert_eq!(reports, [r#"{"n":5}"#, r#"{"n":4}"#, r#"{"n":3}"#]);
    assert!(s.cluster(99, 10, &filter()).unwrap().is_none());
}

#[test]
fn filters_by_kind_namespace_and_time() {
    let d = Dir::new("filter");
    let now = now_ns();
    let mut s = Store::open(&d.0).unwrap();
    s.insert(&[write(1, 1, now - 7_200_000_000_000, None)], &keep())
        .unwrap();
    s.insert(&[write(2, 1, now, Some("shop"))], &keep())
        .unwrap();
    let ids = |f: Filter| -> Vec<i64> { s.list(&f).unwrap().iter().map(|c| c.id).collect() };
    assert_eq!(
        ids(Filter {
            namespace: Some("shop".into()),
            ..filter()
        }),
        [2]
    );
    assert_eq!(
        ids(Filter {
            since_ns: Some(now - 3_600_000_000_000),
            ..filter()
        }),
        [2]
    );
    assert!(ids(Filter {
        kind: Some("go_panic".into()),
        ..filter()
    })
    .is_empty());
}

#[test]
fn old_reports_go_and_the_size_is_bounded() {
    let d = Dir::new("prune");
    let mut s = Store::open(&d.0).unwrap();
    let old = now_ns() - 7_200_000_000_000;
    s.insert(&[write(1, 1, old, None)], &keep()).unwrap();
    s.insert(&[write(2, 1, now_ns(), None)], &keep()).unwrap();
    assert_eq!(s.prune(&keep()).unwrap(), 1);
    let big = "x".repeat(100_000);
    for n in 0..50 {
        let mut w = report(3 + n, 1, now_ns(), None);
        w.json = big.clone();
        s.insert(&[Item::Report(Box::new(w))], &keep()).unwrap();
    }
    let tight = Retention {
        max_bytes: 1 << 20,
        ..keep()
    };
    s.prune(&tight).unwrap();
    assert!(
        s.bytes().unwrap() <= 1 << 20,
        "{} bytes",
        s.bytes().unwrap()
    );
    // Clusters keep their counts when their reports go.
    assert_eq!(s.clusters().unwrap().len(), 52);
}

#[test]
fn a_damaged_database_is_moved_aside_and_a_new_one_started() {
    let d = Dir::new("damaged");
    fs::create_dir_all(&d.0).unwrap();
    fs::write(
        d.0.join(FILE),
        b"this is not a database, it is garbage ".repeat(200),
    )
    .unwrap();
    let s = Store::open(&d.0).unwrap();
    assert!(s.clusters().unwrap().is_empty());
    let aside: Vec<_> = fs::read_dir(&d.0)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("crashwatch.db.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
}

#[test]
fn reading_without_a_store_says_so() {
    let d = Dir::new("none");
    let e = Store::open_read(&d.0).err().unwrap().to_string();
    assert!(e.contains("no crash history"), "{e}");
}

#[test]
fn builds_per_cluster_and_first_sightings_are_kept() {
    let d = Dir::new("builds");
    let h = 3_600_000_000_000u64;
    let t0 = now_ns() - 10 * h;
    let sighting = |rev: &str, at| Sighting {
        program: "example.com/api".into(),
        revision: rev.into(),
        at_ns: at,
    };
    let hit = |count, at, rev: &str, image: &str| {
        let mut w = report(1, count, at, None);
        w.facts.revision = Some(rev.into());
        w.facts.version = Some("v1.2.3".into());
        w.facts.image = Some(image.into());
        Item::Report(Box::new(w))
    };
    {
        let mut s = Store::open(&d.0).unwrap();
        let mut first = report(1, 1, t0, None);
        first.cluster.regression = Some("bbb".into());
        first.facts.revision = Some("bbb".into());
        s.insert(
            &[
                Item::Build(sighting("aaa", t0 - h)),
                Item::Build(sighting("bbb", t0)),
                Item::Report(Box::new(first)),
                hit(2, t0 + h, "bbb", "api:2"),
                hit(3, t0 + 2 * h, "ccc", "api:3"),
                // Seen again later: the first sighting stays.
                Item::Build(sighting("bbb", t0 + 5 * h)),
            ],
            &keep(),
        )
        .unwrap();
    }
    let s = Store::open_read(&d.0).unwrap();
    let mut builds = s.builds().unwrap();
    builds.sort_by_key(|b| b.at_ns);
    assert_eq!(builds, [sighting("aaa", t0 - h), sighting("bbb", t0)]);
    assert_eq!(s.clusters().unwrap()[0].regression.as_deref(), Some("bbb"));
    let (row, _) = s.cluster(1, 1, &filter()).unwrap().unwrap();
    assert_eq!(row.regression.as_deref(), Some("bbb"));
    let got: Vec<_> = row
        .builds
        .iter()
        .map(|b| (b.revision.as_str(), b.image.as_str(), b.count))
        .collect();
    // Newest first; the first report had no image, the second the same revision with one.
    assert_eq!(
        got,
        [("ccc", "api:3", 1), ("bbb", "api:2", 1), ("bbb", "", 1)]
    );
}

#[test]
fn a_version_1_database_gains_the_regression_column() {
    let d = Dir::new("v1");
    fs::create_dir_all(&d.0).unwrap();
    {
        let c = Connection::open(d.0.join(FILE)).unwrap();
        c.execute_batch(
            "CREATE TABLE clusters (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE,
                 kind TEXT NOT NULL, headline TEXT NOT NULL, top_frame TEXT NOT NULL,
                 count INTEGER NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL);
             INSERT INTO clusters VALUES (7, 'v1:0000000000000007', 'signal', 'SIGSEGV', '', 3, 1, 2);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut s = Store::open(&d.0).unwrap();
    let known = s.clusters().unwrap();
    assert_eq!(
        (known[0].id, known[0].count, known[0].regression.clone()),
        (7, 3, None)
    );
    s.insert(&[write(7, 4, now_ns(), None)], &keep()).unwrap();
    assert_eq!(s.clusters().unwrap()[0].count, 4);
}
