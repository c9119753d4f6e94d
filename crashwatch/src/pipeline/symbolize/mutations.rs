//! A property test over mutated real binaries: whatever an image's author wrote into an ELF
//! file, its pclntab or its CFI, reading it, naming addresses in it and unwinding through it
//! gives answers or reasons, never a panic or a hang.
//!
//! cargo-fuzz would need its own crate and an instrumented nightly build; a seeded mutator over
//! the binaries the tests build anyway reaches the same code (every parser the agent runs on a
//! file) and runs in every `cargo test`. Each mutation writes the bytes to a memfd, so the
//! file goes through exactly the open-and-map path the agent takes.
use std::{fs::File, io::Write, os::fd::FromRawFd, rc::Rc};

use super::{
    files::ModuleFile,
    names,
    space::{Placed, Space},
    unwind::{self, Step, Via},
};
use crate::{gobuild, kernel::decode::Stack};

/// xorshift64*: reproducible from the seed the failure message prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn memfd(bytes: &[u8]) -> File {
    // SAFETY: a fresh anonymous file; the descriptor is owned by the File from here on.
    let fd = unsafe { libc::memfd_create(c"cw-mutant".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes).unwrap();
    f
}

/// Byte ranges worth damaging: ELF and program headers, section headers, and the sections
/// the readers parse.
fn targets(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    use object::{Object, ObjectSection};
    let obj = object::File::parse(bytes).unwrap();
    let mut t = Vec::new();
    t.push(0..bytes.len().min(4096));
    let shoff = u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()) as usize;
    t.push(shoff..bytes.len());
    for name in [
        ".gopclntab",
        ".data.rel.ro",
        ".go.buildinfo",
        ".eh_frame",
        ".eh_frame_hdr",
        ".symtab",
        ".dynsym",
        ".debug_frame",
    ] {
        if let Some((off, len)) = obj.section_by_name(name).and_then(|s| s.file_range()) {
            let (off, len) = (off as usize, len as usize);
            // The start of a table holds its header and indexes: weigh it.
            t.push(off..off + len.min(8192));
            t.push(off..off + len);
        }
    }
    t.retain(|r| r.start < r.end && r.end <= bytes.len());
    t
}

fn mutate(rng: &mut Rng, clean: &[u8], targets: &[std::ops::Range<usize>]) -> Vec<u8> {
    let mut b = clean.to_vec();
    for _ in 0..1 + rng.below(4) {
        let r = &targets[rng.below(targets.len())];
        let at = r.start + rng.below(r.end - r.start);
        match rng.below(4) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 => {
                // A word set to a value parsers trip on: zero, all ones, huge, the file size.
                let v: u32 = [0, u32::MAX, 0x7fff_ffff, clean.len() as u32][rng.below(4)];
                let end = (at + 4).min(b.len());
                b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            _ => {
                let end = (at + 8).min(b.len());
                for x in &mut b[at..end] {
                    *x = rng.next() as u8;
                }
            }
        }
    }
    if rng.below(10) == 0 {
        b.truncate(rng.below(b.len()));
    }
    b
}

/// Everything the agent does with a file, on `bytes`: the Go prober's reader, then the
/// symbolizer's open, names at addresses across the code, and a CFI walk over random words.
fn exercise(rng: &mut Rng, bytes: &[u8], blazesym: bool, seen: &mut Seen) {
    if let Ok(Some(g)) = crate::read::gobin::parse(bytes, None) {
        seen.probed += !g.probes.is_empty() as usize;
    }
    let Ok(m) = ModuleFile::open(memfd(bytes)) else {
        return;
    };
    seen.opened += 1;
    let m = Rc::new(m);
    let span = m.span.clone();
    let base = 0x5555_0000_0000u64;
    let space = Space {
        placed: vec![Placed {
            range: base.wrapping_add(span.start)..base.wrapping_add(span.end),
            bias: base,
            path: "mutant".into(),
            file: Ok(m.clone()),
        }],
    };
    let width = span.end.saturating_sub(span.start).max(1);
    for i in 0..16 {
        let ip = base
            .wrapping_add(span.start)
            .wrapping_add(rng.next() % width);
        if let Some(g) = &m.go {
            seen.go_lookups += 1;
            seen.go_named += !g.places(m.bytes(), ip.wrapping_sub(base)).is_empty() as usize;
            let _ = g.frame_rule(m.bytes(), ip.wrapping_sub(base));
        }
        if blazesym && i < 2 {
            let _ = names::name(
                &space,
                &Step {
                    ip,
                    is_return: i > 0,
                    via: Via::Cfi,
                },
            );
        }
    }
    let sp = 0x7ffd_0000_0000u64;
    let data: Vec<u8> = (0..4096)
        .map(|i| {
            if i % 8 == 0 && rng.below(2) == 0 {
                // Plausible return addresses into the module now and then.
                0
            } else {
                rng.next() as u8
            }
        })
        .collect();
    let st = Stack {
        sp,
        data,
        ..Default::default()
    };
    let ip = base
        .wrapping_add(span.start)
        .wrapping_add(rng.next() % width);
    let walk = unwind::cfi(&space, &st, ip, sp, sp + 64);
    assert!(walk.steps.len() <= unwind::DEPTH);
    seen.unwound_frames += walk.steps.len();
}

/// What the mutants let through, to show the readers were reached, not just refused.
#[derive(Debug, Default)]
struct Seen {
    probed: usize,
    opened: usize,
    go_lookups: usize,
    go_named: usize,
    unwound_frames: usize,
}

#[test]
fn mutated_binaries_never_panic_the_readers() {
    let seed = std::env::var("CRASHWATCH_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de_u64);
    // CI runs 600 per input (seconds); longer runs take CRASHWATCH_MUTATIONS.
    let per_input: usize = std::env::var("CRASHWATCH_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut rng = Rng(seed);
    let inputs = [
        gobuild::build("1.25", gobuild::Flavour::Stripped),
        gobuild::build("1.27", gobuild::Flavour::External),
        gobuild::build("1.19", gobuild::Flavour::Pie),
        std::path::PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
    ];
    let mut runs = 0;
    let mut seen = Seen::default();
    for path in &inputs {
        let clean = std::fs::read(path).unwrap();
        let t = targets(&clean);
        for i in 0..per_input {
            let bytes = mutate(&mut rng, &clean, &t);
            let state = rng.0;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exercise(&mut rng, &bytes, i % 20 == 0, &mut seen)
            }));
            assert!(
                r.is_ok(),
                "{} mutation {i} panicked (seed {seed}, rng state {state:#x})",
                path.display()
            );
            runs += 1;
        }
    }
    println!("{runs} mutated binaries read, named and unwound through without a panic: {seen:?}");
    // Most mutants must still get through to the readers, or the test tests only refusals.
    assert!(seen.opened > runs / 2, "{seen:?}");
    assert!(seen.probed > runs / 4, "{seen:?}");
    assert!(seen.go_named > seen.go_lookups / 4, "{seen:?}");
}
