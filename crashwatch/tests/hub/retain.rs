//! Retention's size bound after the same pass removed rows by age: the planner's row count
//! is from before those deletions, and must not make the pass remove more "for size".
use crate::{
    common::state_dir,
    servers::{token_file, Hub, Postgres},
    wait_until, INGEST,
};

#[test]
fn the_size_bound_counts_what_the_same_pass_removed_by_age() {
    let _alone = crate::alone();
    let pg = Postgres::start();
    let dir = state_dir("hub-size");
    let ingest = token_file(&dir, "ingest", INGEST);
    // Migrate with a replica that never thins.
    drop(Hub::start(&pg.url(), &ingest, None));
    // 20,000 reports of ~1 KiB (stored uncompressed), the first 15,000 ten days old; the
    // planner's count taken while all 20,000 are there.
    pg.query(
        "INSERT INTO clusters (id, fingerprint, kind, headline, top_frame, count,
             first_seen_ns, last_seen_ns) VALUES (1, 'v1:s', 'signal', 'x', 'f', 20000, 0, 0);
         INSERT INTO reports (node, boot_id, pid, start_key, cluster, time_ns, received_ns,
             namespace, pod, workload, image, signal, revision, exe, body)
         SELECT 'n', 'b', g, g::text, 1,
             (EXTRACT(EPOCH FROM now())::BIGINT - CASE WHEN g <= 15000 THEN 864000 ELSE 60 END)
                 * 1000000000, 0, '', '', '', '', '', '', '',
             (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 32) i)
         FROM generate_series(1, 20000) g;
         ANALYZE reports;",
    );
    // 8 MiB holds ~7,000 such rows: the 5,000 left by age fit.
    let hub = Hub::spawn_with(
        &pg.url(),
        &ingest,
        None,
        &[
            "--retention-interval",
            "1",
            "--keep-days",
            "2",
            "--store-max-mib",
            "8",
            "--keep-per-cluster",
            "100000",
        ],
    );
    wait_until("a retention pass", 60, || {
        hub.log().iter().any(|l| l.contains("retention: removed"))
    });
    let said = hub
        .log()
        .into_iter()
        .find(|l| l.contains("retention: removed"));
    assert_eq!(pg.one("SELECT COUNT(*) FROM reports"), 5000, "{said:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
