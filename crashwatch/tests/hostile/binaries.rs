//! What the agent reads: binaries that lie, that are huge, that land on reused inodes, that
//! are damaged.
use std::{
    fs,
    os::unix::{fs::MetadataExt, process::ExitStatusExt},
    path::Path,
    time::Duration,
};

use crate::{
    agent,
    common::{
        crasher_bin,
        gobuild::{self, Flavour},
        spawn, Agent, Crasher, MemCgroup, Setup,
    },
    corpus, frames, probed_then_panics, run,
};

/// 1. A symbol two bytes into an instruction must not get a breakpoint: the program's
///    arithmetic comes out the same under the agent.
#[test]
fn probes_never_land_inside_an_instruction() {
    let a = agent();
    let d = corpus::dir("fake-go");
    let bin = corpus::fake_go(&d);
    let want = corpus::FAKE_GO_ANSWER.to_string();
    assert_eq!(run(&bin, &[]).1.trim(), want, "before the agent saw it");
    // The agent has decided about the binary once it says anything about it.
    let said = format!("Go binary {}", bin.display());
    assert!(
        a.wait_log_count(&said, 1, Duration::from_secs(60)),
        "the agent never looked at {}; log:\n{}",
        bin.display(),
        a.log()
    );
    for i in 0..5 {
        let (_, out, st) = run(&bin, &[]);
        assert_eq!(
            (out.trim(), st.signal()),
            (want.as_str(), None),
            "run {i}: the program computed something else under the agent; log:\n{}",
            a.log()
        );
    }
    assert!(
        a.log().contains("runtime.gopanic") && a.log().contains("not probed"),
        "the refusal is said: {}",
        a.log()
    );
}

/// 2. A 3 GB (sparse) ELF file that looks like Go: the agent, in a 256 MiB memory cgroup,
///    neither dies nor grows, and still reports the crash of the program in that file.
#[test]
fn a_3gb_binary_neither_kills_nor_bloats_a_memory_limited_agent() {
    let cg = MemCgroup::named(
        &format!("crashwatch-hostile-agent-{}", std::process::id()),
        256 << 20,
    );
    let procs = cg.procs_file();
    let a = Agent::start_with(
        &[],
        Setup {
            command: Some(Box::new(move |cmd| unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || {
                    fs::write(&procs, std::process::id().to_string())?;
                    Ok(())
                });
            })),
            ..Setup::default()
        },
    );
    let d = corpus::dir("sparse");
    let bin = d.join("crasher-3g");
    corpus::with_build_info(crasher_bin(), &bin);
    corpus::sparse(&bin, 3 << 30);
    let rss_before = a.rss_kib();
    let c = Crasher::finish(spawn(&mut Crasher::command_of(&bin, "null")));
    assert_eq!(c.signal, Some(11));
    let r = a.report_for(c.pid);
    assert!(
        a.wait_log_count(
            &format!("Go binary {}", bin.display()),
            1,
            Duration::from_secs(60)
        ),
        "the agent never read the file; log:\n{}",
        a.log()
    );
    let rss_after = a.rss_kib();
    println!(
        "agent RSS {rss_before} KiB before, {rss_after} KiB after reading the 3 GiB file; cgroup peak {} MiB",
        cg.peak_bytes() >> 20
    );
    assert_eq!(a.wait_exit(Duration::ZERO), None, "the agent died");
    assert_eq!(
        cg.oom_kills(),
        0,
        "the OOM killer acted in the agent's cgroup"
    );
    assert!(rss_after < 100 << 10, "agent RSS {rss_after} KiB");
    assert_eq!(r["kind"], "signal");
    assert_eq!(frames(&r).first().map(String::as_str), Some("null_write"));
    let _ = fs::remove_dir_all(&d);
}

/// 3. A Go binary on the inode of a file the agent classified as "not Go" is probed.
#[test]
fn go_binaries_on_reused_inodes_are_probed() {
    let a = agent();
    let d = corpus::dir("inodes");
    let go = gobuild::build("1.27", Flavour::Static);
    let path = d.join("app");
    let mut reused = 0;
    for i in 0..20 {
        fs::copy("/bin/sleep", &path).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        // Not Go: running long enough for the agent to classify it through the process.
        assert!(run(&path, &["0.3"]).2.success());
        fs::remove_file(&path).unwrap();
        fs::copy(&go, &path).unwrap();
        reused += (fs::metadata(&path).unwrap().ino() == ino) as usize;
        probed_then_panics(a, &path, i + 1);
        fs::remove_file(&path).unwrap();
    }
    println!("{reused} of 20 Go binaries landed on the inode of the file before them");
    assert!(
        reused >= 10,
        "only {reused} of 20 files reused an inode: this filesystem cannot show the defect"
    );
}

/// 7. Damaged metadata costs only what depends on it: a pclntab header with nonsense counts
///    (the runtime never reads them) and garbage build info still get the binary probed, and
///    its panic reported.
#[test]
fn damaged_go_metadata_still_gets_panics_reported() {
    let a = agent();
    let d = corpus::dir("damaged");
    let go = gobuild::build("1.27", Flavour::Static);
    type Damage = fn(&Path, &Path);
    let cases: [(&str, Damage); 2] = [
        ("pclntab", corpus::damaged_pclntab_header),
        ("buildinfo", corpus::damaged_build_info),
    ];
    for (name, damage) in cases {
        let bin = d.join(format!("damaged-{name}"));
        damage(&go, &bin);
        let r = probed_then_panics(a, &bin, 1);
        if name == "buildinfo" {
            assert!(
                r["go"]["version"].is_null(),
                "version {}",
                r["go"]["version"]
            );
        }
        assert!(
            a.log().contains(&format!("Go binary {}: ", bin.display())),
            "{name}: what was wrong is said"
        );
    }
}
