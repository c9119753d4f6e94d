//! Builds the hostile inputs the tests feed the agent: binaries and files made to look like
//! what a careless or malicious world leaves on a host. Built fresh by every run (gcc,
//! objcopy and the Go toolchains the other tests use), never committed.
#![allow(dead_code)]

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use object::{Object, ObjectSection};

/// A fresh directory for one test.
pub fn dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles C `source` into `out`.
pub fn cc(source: &str, out: &Path) {
    let src = out.with_extension("c");
    fs::write(&src, source).unwrap();
    run(Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(out)
        .arg(&src));
}

/// A `.go.buildinfo` blob as Go 1.18+ writes it: magic, pointer size, flags (inline
/// strings), padding, then the version and module info as varint-prefixed strings.
pub fn build_info_blob(version: &str) -> Vec<u8> {
    let mut b = b"\xff Go buildinf:".to_vec();
    b.extend_from_slice(&[8, 2]);
    b.resize(32, 0);
    b.push(version.len() as u8);
    b.extend_from_slice(version.as_bytes());
    b.push(0);
    b
}

/// `src` with a `.go.buildinfo` section added: anything carrying one looks like Go.
pub fn with_build_info(src: &Path, dst: &Path) {
    let blob = dst.with_extension("buildinfo");
    fs::write(&blob, build_info_blob("go1.21.0")).unwrap();
    run(Command::new("objcopy")
        .arg(format!("--add-section=.go.buildinfo={}", blob.display()))
        .arg(src)
        .arg(dst));
}

/// The value the fake Go program prints when nothing changed its code.
pub const FAKE_GO_ANSWER: u64 = 0x1122_3344_5566_7789;

/// A C program that looks like Go (build info, a `runtime.gopanic` symbol) where that symbol
/// points two bytes into a `movabs` instruction: a probe there rewrites the constant the
/// program computes with.
pub fn fake_go(dir: &Path) -> PathBuf {
    let plain = dir.join("fake-go-plain");
    cc(
        r#"#include <stdio.h>
unsigned long compute(unsigned long x);
__asm__(".text\n"
        ".globl compute\n.type compute,@function\n"
        "compute:\n"
        "  movabs $0x1122334455667788, %rax\n"
        "  add %rdi, %rax\n"
        "  ret\n"
        ".size compute, .-compute\n"
        ".globl \"runtime.gopanic\"\n"
        ".type \"runtime.gopanic\",@function\n"
        ".set \"runtime.gopanic\", compute+2\n");
int main(void) { printf("%lu\n", compute(1)); return 0; }
"#,
        &plain,
    );
    let out = dir.join("fake-go");
    with_build_info(&plain, &out);
    out
}

/// Extends `path` to `size` bytes with a hole: gigabytes that take no disk.
pub fn sparse(path: &Path, size: u64) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(size).unwrap();
}

/// A copy of `src` whose functions `names` are renamed `imposter_<name>`: same layout,
/// different names, so a frame symbolized from the wrong file says so.
pub fn imposter(src: &Path, dst: &Path, names: &[&str]) {
    let mut cmd = Command::new("objcopy");
    for n in names {
        cmd.arg(format!("--redefine-sym={n}=imposter_{n}"));
    }
    run(cmd.arg(src).arg(dst));
}

/// (file offset, size) of the first of `names` the ELF file has.
fn section(bytes: &[u8], names: &[&str]) -> (usize, usize) {
    let obj = object::File::parse(bytes).unwrap();
    let s = names
        .iter()
        .find_map(|n| obj.section_by_name(n))
        .unwrap_or_else(|| panic!("none of {names:?}"));
    let (off, size) = s.file_range().unwrap();
    (off as usize, size as usize)
}

fn write_exec(dst: &Path, bytes: &[u8]) {
    fs::write(dst, bytes).unwrap();
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A Go binary whose pclntab header has nonsense counts and offsets. The runtime reads the
/// table through moduledata and never looks at them, so the program still runs (and panics).
pub fn damaged_pclntab_header(src: &Path, dst: &Path) {
    let mut b = fs::read(src).unwrap();
    let (off, _) = section(&b, &[".gopclntab", ".data.rel.ro.gopclntab"]);
    b[off + 8..off + 16].copy_from_slice(&u64::MAX.to_le_bytes()); // nfunc
    b[off + 64..off + 72].copy_from_slice(&7u64.to_le_bytes()); // function table offset
    write_exec(dst, &b);
}

/// A Go binary whose build info is garbage (only tools read it).
pub fn damaged_build_info(src: &Path, dst: &Path) {
    let mut b = fs::read(src).unwrap();
    let (off, _) = section(&b, &[".go.buildinfo"]);
    b[off..off + 14].copy_from_slice(b"not build info");
    write_exec(dst, &b);
}
