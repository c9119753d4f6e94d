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
    let now = crate::model::clock::now_ns();
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
    let now = crate::model::clock::now_ns();
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
    let old = crate::model::clock::now_ns() - 7_200_000_000_000;
    s.insert(&[write(1, 1, old, None)], &keep()).unwrap();
    s.insert(&[write(2, 1, crate::model::clock::now_ns(), None)], &keep())
        .unwrap();
    assert_eq!(s.prune(&keep()).unwrap(), 1);
    let big = "x".repeat(100_000);
    for n in 0..50 {
        let mut w = report(3 + n, 1, crate::model::clock::now_ns(), None);
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
    let t0 = crate::model::clock::now_ns() - 10 * h;
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
    s.insert(&[write(7, 4, crate::model::clock::now_ns(), None)], &keep())
        .unwrap();
    assert_eq!(s.clusters().unwrap()[0].count, 4);
}

mod page {
    use super::super::page::Listing;
    use super::*;

    const HOUR: u64 = super::super::page::HOUR_NS;

    fn ids(l: &Listing) -> Vec<i64> {
        l.clusters.iter().map(|c| c.id).collect()
    }

    #[test]
    fn pages_go_on_from_their_cursor_and_text_matches_headline_or_binary() {
        let d = Dir::new("page");
        let mut s = Store::open(&d.0).unwrap();
        let now = crate::model::clock::now_ns();
        let batch: Vec<Item> = (1..=5)
            .map(|i| write(i, 1, now - (10 - i as u64) * 1_000, None))
            .collect();
        s.insert(&batch, &keep()).unwrap();
        let f = Filter {
            limit: 2,
            ..filter()
        };
        let p1 = s.list_page(&f, None, now).unwrap();
        assert_eq!(ids(&p1), [5, 4]);
        assert!(!p1.partial);
        let p2 = s.list_page(&f, p1.next, now).unwrap();
        assert_eq!(ids(&p2), [3, 2]);
        let p3 = s.list_page(&f, p2.next, now).unwrap();
        assert_eq!((ids(&p3), p3.next), (vec![1], None));
        let c = Cursor::parse(&p1.next.unwrap().to_string()).unwrap();
        assert_eq!(Some(c), p1.next);

        let mut w = report(6, 1, now, None);
        w.cluster.headline = "panic: Widget Exploded".into();
        w.facts.exe = Some("/srv/Billing-API".into());
        s.insert(&[Item::Report(Box::new(w))], &keep()).unwrap();
        let find = |t: &str| {
            let f = Filter {
                text: Some(t.into()),
                ..filter()
            };
            ids(&s.list_page(&f, None, now).unwrap())
        };
        assert_eq!(find("widget exploded"), [6]);
        assert_eq!(find("billing-api"), [6]);
        assert_eq!(find("null_write").len(), 6);
        assert!(find("nowhere").is_empty());
    }

    #[test]
    fn a_search_walks_a_bounded_number_of_clusters_and_says_where_it_stopped() {
        let d = Dir::new("scan");
        let mut s = Store::open(&d.0).unwrap();
        let now = crate::model::clock::now_ns();
        let n = super::super::page::SCAN as i64 + 10;
        // The oldest cluster is the only go_panic.
        let batch: Vec<Item> = (1..=n)
            .map(|i| {
                let mut w = report(i, 1, now - (n - i) as u64 * 1_000, None);
                if i == 1 {
                    w.cluster.kind = "go_panic".into();
                }
                Item::Report(Box::new(w))
            })
            .collect();
        s.insert(&batch, &keep()).unwrap();
        let f = Filter {
            kind: Some("go_panic".into()),
            ..filter()
        };
        let first = s.list_page(&f, None, now).unwrap();
        assert!(first.clusters.is_empty() && first.partial && first.next.is_some());
        let second = s.list_page(&f, first.next, now).unwrap();
        assert_eq!(ids(&second), [1]);
        assert!(!second.partial && second.next.is_none());
    }

    #[test]
    fn the_timeline_counts_every_crash_though_reports_are_thinned() {
        let d = Dir::new("timeline");
        let mut s = Store::open(&d.0).unwrap();
        let now = crate::model::clock::now_ns();
        // 10 crashes this hour, 2 five hours ago; 3 reports kept (keep()).
        let mut batch: Vec<Item> = (1..=2).map(|c| write(1, c, now - 5 * HOUR, None)).collect();
        batch.extend((3..=12).map(|c| write(1, c, now, None)));
        s.insert(&batch, &keep()).unwrap();
        let t = s.timeline(1, 24, 1, now).unwrap();
        assert_eq!(t.counts.len(), 24);
        assert_eq!(t.counts[23], 10);
        assert_eq!(t.counts[18], 2);
        assert_eq!(t.counts.iter().sum::<u64>(), 12);
        let days = s.timeline(1, 30, 24, now).unwrap();
        assert_eq!(days.counts.iter().sum::<u64>(), 12);
        assert_eq!(days.bucket_secs, 86_400);
        let row = s.cluster_row(1, &filter(), now).unwrap().unwrap();
        assert_eq!(row.last_24h.unwrap().counts[23], 10);
        let reports = s.reports_of(1, None, 2).unwrap();
        assert_eq!(reports.len(), 2);
        let older = s.reports_of(1, Some(reports[1].id), 10).unwrap();
        assert_eq!(older.len(), 1);
        assert_eq!(s.latest_report(1).unwrap(), Some(reports[0].id));
        let (cluster, json) = s.report(reports[0].id).unwrap().unwrap();
        assert_eq!((cluster, json.as_str()), (1, r#"{"n":12}"#));
        assert!(s.report(-1).unwrap().is_none());
    }

    #[test]
    fn a_version_2_database_gets_its_timeline_from_the_kept_reports() {
        let d = Dir::new("backfill");
        let now = crate::model::clock::now_ns();
        {
            let mut s = Store::open(&d.0).unwrap();
            s.insert(&[write(1, 1, now, None), write(1, 2, now, None)], &keep())
                .unwrap();
            s.conn
                .execute_batch("DROP TABLE cluster_hours; DROP TABLE cluster_exes")
                .unwrap();
        }
        let s = Store::open(&d.0).unwrap();
        assert_eq!(s.timeline(1, 24, 1, now).unwrap().counts[23], 2);
        let f = Filter {
            text: Some("crasher".into()),
            ..filter()
        };
        assert_eq!(ids(&s.list_page(&f, None, now).unwrap()), [1]);
    }
}

#[test]
fn a_clusters_first_and_latest_minidumps_and_cores_are_kept_and_each_goes_with_its_report() {
    let d = Dir::new("dumps");
    let mut s = Store::open(&d.0).unwrap();
    let dumps = d.0.join("dumps");
    fs::create_dir_all(&dumps).unwrap();
    // Not the store's to remove, whatever a report says.
    let outside = d.0.join("keep-me.dmp");
    fs::write(&outside, b"x").unwrap();
    let keep = Retention {
        per_cluster: 100,
        ..keep()
    };
    let old = crate::model::clock::now_ns() - 7_200_000_000_000;
    let (mut files, mut cores) = (Vec::new(), Vec::new());
    for n in 1..=7u64 {
        let f = dumps.join(format!("{n}-0.dmp"));
        fs::write(&f, b"MDMP").unwrap();
        files.push(f.clone());
        let core = dumps.join(format!("{n}-0.core.zst"));
        fs::write(&core, b"zstd").unwrap();
        cores.push(core.clone());
        let mut w = report(
            1,
            n,
            if n == 1 {
                old
            } else {
                crate::model::clock::now_ns()
            },
            None,
        );
        w.facts.minidump = Some(f.display().to_string());
        // Reports 1 to 6 kept their cores (the seventh's was over its quota).
        w.facts.core = (n < 7).then(|| core.display().to_string());
        s.insert(&[Item::Report(Box::new(w))], &keep).unwrap();
    }
    let mut w = report(2, 1, old, None);
    w.facts.minidump = Some(outside.display().to_string());
    s.insert(&[Item::Report(Box::new(w))], &keep).unwrap();
    let exist = |fs_: &[PathBuf]| fs_.iter().map(|f| f.exists()).collect::<Vec<_>>();
    // The first, and the latest four.
    assert_eq!(exist(&files), [true, false, false, true, true, true, true]);
    assert_eq!(exist(&cores), [true, false, true, true, true, true, true]);
    // The first report is past the age bound: its minidump goes with it (the other old
    // report's file is outside the minidumps' directory: left).
    assert_eq!(s.prune(&keep).unwrap(), 2);
    assert_eq!(exist(&files), [false, false, false, true, true, true, true]);
    assert_eq!(exist(&cores), [false, false, true, true, true, true, true]);
    assert!(outside.exists());
}
