//! The Go reader against binaries built by six toolchains in four flavours, whole and damaged.
use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSymbol, ObjectSymbolTable};

use super::*;
use crate::gobuild;
use gobuild::{build, Flavour, FLAVOURS, VERSIONS};

fn symbols(path: &std::path::Path) -> HashMap<String, u64> {
    let bytes = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*bytes).unwrap();
    obj.symbols()
        .filter_map(|s| Some((s.name().ok()?.to_string(), s.address())))
        .collect()
}

/// (file offset, size) of section `name` (the pclntab by either of its names).
fn section(bytes: &[u8], name: &str) -> (usize, usize) {
    let obj = object::File::parse(bytes).unwrap();
    let s = obj
        .section_by_name(name)
        .or_else(|| obj.section_by_name(&format!(".data.rel.ro{name}")))
        .unwrap_or_else(|| panic!("no section {name}"));
    let (off, size) = s.file_range().unwrap();
    (off as usize, size as usize)
}

fn parsed(bytes: &[u8]) -> GoBinary {
    parse(bytes, None).unwrap().expect("still recognised as Go")
}

#[test]
fn every_version_and_flavour_yields_probes_and_build_info() {
    let (_, rev) = gobuild::source();
    for v in VERSIONS {
        let reference = open(&build(v, Flavour::Static)).unwrap().unwrap();
        for f in FLAVOURS {
            let path = build(v, f);
            let g = open(&path)
                .unwrap()
                .unwrap_or_else(|| panic!("{v} {f:?} not recognised as Go"));
            assert!(g.problems.is_empty(), "{v} {f:?}: {:?}", g.problems);
            assert!(
                g.version
                    .as_deref()
                    .is_some_and(|x| x.starts_with(&format!("go{v}"))),
                "{v} {f:?}: version {:?}",
                g.version
            );
            assert_eq!(
                g.probes.len(),
                PROBES_PER_BINARY,
                "{v} {f:?}: {:?}",
                g.probes
            );
            let output = if v >= "1.23" {
                "runtime.writeErrData"
            } else {
                "runtime.write1"
            };
            assert!(
                g.probes.iter().any(|p| p.func == output),
                "{v} {f:?}: {:?}",
                g.probes
            );
            let b = g.build.as_ref().unwrap();
            assert_eq!(b.vcs_revision.as_deref(), Some(rev.as_str()), "{v} {f:?}");
            assert_eq!(b.main_module.as_deref(), Some("example.com/gocrash"));
            assert_eq!(b.path.as_deref(), Some("example.com/gocrash"), "{v} {f:?}");
            assert_eq!(b.goos.as_deref(), Some("linux"), "{v} {f:?}");
            assert_eq!(b.cgo_enabled, Some(f.cgo()), "{v} {f:?}");
            assert_eq!(g.from_pclntab, f.stripped(), "{v} {f:?}");
            if f == Flavour::Stripped {
                // Same code, no symbols: pclntab must find the very same entry points.
                assert_eq!(g.probes, reference.probes, "{v}: pclntab vs symtab");
                assert_eq!(b.ldflags.as_deref(), Some("-s -w"));
            }
            if f == Flavour::External {
                // Linked elsewhere, so other offsets: the same functions must be found.
                let names = |g: &GoBinary| -> Vec<String> {
                    g.probes.iter().map(|p| p.func.to_string()).collect()
                };
                assert_eq!(names(&g), names(&reference), "{v}: external-link PIE");
            }
        }
    }
}

#[test]
fn type_names_from_descriptors() {
    // Type descriptors have no symbols of their own; itabs do (until Go 1.27, whose type
    // names the integration tests check from real panics) and point at them.
    let mut checked = 0;
    for v in VERSIONS {
        for f in [Flavour::Static, Flavour::Pie] {
            let path = build(v, f);
            let syms = symbols(&path);
            let bytes = std::fs::read(&path).unwrap();
            let obj = object::File::parse(&*bytes).unwrap();
            let img = Image::new(&obj, &bytes);
            let g = open(&path).unwrap().unwrap();
            for (itab, want) in [
                ("*errors.errorString,error", "*errors.errorString"),
                ("runtime.errorString,error", "runtime.errorString"),
            ] {
                let Some(at) = syms
                    .get(&format!("go:itab.{itab}"))
                    .or_else(|| syms.get(&format!("go.itab.{itab}")))
                else {
                    continue;
                };
                let ty = img.u64(at + 8).unwrap();
                // Loaded at its link address: start_code equals the text segment's vaddr.
                assert_eq!(
                    g.type_name(ty, g.layout.min_exec_vaddr).as_deref(),
                    Some(want),
                    "{v} {f:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} type names checked");
}

#[test]
fn pclntab_names_functions_like_the_symbol_table() {
    for v in VERSIONS {
        with_static_table(v, |_, syms, tab| {
            let main = syms["main.main"];
            assert_eq!(tab.func_at(main + 3), Some(("main.main", main)), "{v}");
            assert!(tab.len() > 1000, "{v}: {} functions", tab.len());
        });
    }
}

/// Calls `f` with Go `v`'s static test binary, its symbols and its `.gopclntab` parsed.
fn with_static_table(
    v: &str,
    f: impl FnOnce(&std::path::Path, &HashMap<String, u64>, &pclntab::Pclntab<'_>),
) {
    let path = build(v, Flavour::Static);
    let syms = symbols(&path);
    let bytes = std::fs::read(&path).unwrap();
    let obj = object::File::parse(&*bytes).unwrap();
    let data = obj.section_by_name(".gopclntab").unwrap().data().unwrap();
    let text = syms.get("runtime.text").copied();
    let tab = pclntab::Pclntab::parse(data, None, text, &|_| true).unwrap();
    f(&path, &syms, &tab);
}

/// The `pcsp` deltas the Go unwinder uses, against the `.debug_frame` the Go linker writes
/// for the same code (read by readelf, not by us): CFA = SP + delta + 8 at every row. And
/// the flags that end a walk, on the functions the runtime marks.
#[test]
fn pcsp_deltas_match_the_linkers_debug_frame() {
    for v in VERSIONS {
        with_static_table(v, |path, syms, tab| {
            pcsp_against_debug_frame(v, path, syms, tab)
        });
    }
}

fn pcsp_against_debug_frame(
    v: &str,
    path: &std::path::Path,
    syms: &HashMap<String, u64>,
    tab: &pclntab::Pclntab<'_>,
) {
    {
        let out = std::process::Command::new("readelf")
            .arg("--debug-dump=frames-interp")
            .arg(path)
            .output()
            .expect("readelf (binutils)");
        let mut rows = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "0000000000401021 rsp+16   c-8"
            let mut w = line.split_whitespace();
            let (Some(loc), Some(cfa)) = (w.next(), w.next()) else {
                continue;
            };
            let (Ok(pc), Some(off)) = (
                u64::from_str_radix(loc, 16),
                cfa.strip_prefix("rsp+").and_then(|o| o.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if pc == 0 {
                continue; // the CIE's initial row
            }
            let Some(rule) = tab.frame_rule(pc) else {
                continue; // not Go code: the C and assembly glue outside the table
            };
            assert_eq!(rule.sp_delta as u64 + 8, off, "go{v} at {pc:#x}");
            rows += 1;
        }
        assert!(rows > 5000, "go{v}: only {rows} rows compared");
        let rule = |f: &str| {
            let at = syms.get(f).or_else(|| syms.get(&format!("{f}.abi0")));
            tab.frame_rule(*at.unwrap_or_else(|| panic!("go{v}: no {f}")))
                .unwrap_or_else(|| panic!("go{v}: no rule for {f}"))
        };
        assert!(rule("runtime.goexit").top, "go{v}");
        assert!(
            !rule("main.main").top && !rule("main.main").sp_write,
            "go{v}"
        );
        assert!(rule("runtime.systemstack").sp_write, "go{v}");
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let path = build("1.21", Flavour::Static);
    let bytes = std::fs::read(&path).unwrap();
    assert!(parse(&bytes[..4096], None).is_err(), "truncated ELF");
    assert!(parse(b"\x7fELF garbage", None).is_err());
    let not_go = std::fs::read("/bin/sh").unwrap();
    assert!(parse(&not_go, None).unwrap().is_none());
    let mut short = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
    assert!(pclntab::Pclntab::parse(&short, None, Some(1), &|_| true).is_err());
    short.resize(64, 0);
    assert!(pclntab::Pclntab::parse(&short, None, Some(1), &|_| true).is_err());
}

/// The runtime never reads the header's counts and offsets (it uses moduledata), so a binary
/// whose header says nonsense there still runs and still panics: it must still be probed.
#[test]
fn damaged_pclntab_header_is_read_through_moduledata() {
    for v in VERSIONS {
        for f in [Flavour::Static, Flavour::Pie, Flavour::Stripped] {
            let mut bytes = std::fs::read(build(v, f)).unwrap();
            let reference = parsed(&bytes).probes;
            let (off, _) = section(&bytes, ".gopclntab");
            // nfunc, then the function table's offset.
            bytes[off + 8..off + 16].copy_from_slice(&u64::MAX.to_le_bytes());
            let g = parsed(&bytes);
            assert_eq!(g.probes, reference, "go{v} {f:?}: {:?}", g.problems);
            assert!(
                g.problems
                    .iter()
                    .any(|p| p.contains("read through moduledata")),
                "go{v} {f:?}: {:?}",
                g.problems
            );
            bytes[off + 64..off + 72].copy_from_slice(&7u64.to_le_bytes());
            assert_eq!(parsed(&bytes).probes, reference, "go{v} {f:?}");
        }
    }
}

#[test]
fn damaged_build_info_costs_only_the_version() {
    for v in VERSIONS {
        let mut bytes = std::fs::read(build(v, Flavour::Static)).unwrap();
        let reference = parsed(&bytes).probes;
        let (off, _) = section(&bytes, ".go.buildinfo");
        bytes[off..off + 14].copy_from_slice(b"not build info");
        let g = parsed(&bytes);
        assert_eq!((g.version.as_deref(), g.build.is_none()), (None, true));
        assert_eq!(g.probes, reference, "go{v}");
        assert!(g.problems[0].starts_with("build info"), "{:?}", g.problems);
    }
}

/// A symbol moved two bytes into its function (inside an instruction) is refused: the
/// pclntab does not start a function there.
#[test]
fn a_symbol_the_pclntab_does_not_confirm_is_not_probed() {
    for v in VERSIONS {
        let mut bytes = std::fs::read(build(v, Flavour::Static)).unwrap();
        let reference = parsed(&bytes).probes;
        let at = {
            let obj = object::File::parse(&*bytes).unwrap();
            let table = obj.symbol_table().unwrap();
            let sym = table
                .symbols()
                .find(|s| s.name() == Ok("runtime.gopanic"))
                .unwrap();
            let (symtab_off, _) = obj
                .section_by_name(".symtab")
                .unwrap()
                .file_range()
                .unwrap();
            // Elf64_Sym: name u32, info u8, other u8, shndx u16, value u64, size u64.
            symtab_off as usize + 24 * sym.index().0 + 8
        };
        let value = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        bytes[at..at + 8].copy_from_slice(&(value + 2).to_le_bytes());
        let g = parsed(&bytes);
        let funcs: Vec<&str> = g.probes.iter().map(|p| p.func).collect();
        assert!(!funcs.contains(&"runtime.gopanic"), "go{v}: {funcs:?}");
        assert_eq!(g.probes.len(), reference.len() - 1, "go{v}");
        assert!(
            g.problems.iter().any(|p| p.starts_with("runtime.gopanic")),
            "{:?}",
            g.problems
        );
    }
}

/// Whatever byte of the header or build info is damaged, the reader never panics and never
/// picks an address that is not a real entry point.
#[test]
fn no_damage_makes_a_probe_land_anywhere_else() {
    for f in [Flavour::Static, Flavour::Stripped] {
        let clean = std::fs::read(build("1.25", f)).unwrap();
        let reference = parsed(&clean).probes;
        for name in [".gopclntab", ".go.buildinfo"] {
            let (off, size) = section(&clean, name);
            for i in 0..size.min(128) {
                for flip in [0xff, 0x01, 0x80] {
                    let mut bytes = clean.clone();
                    bytes[off + i] ^= flip;
                    let g = parsed(&bytes);
                    for p in &g.probes {
                        assert!(
                            reference.contains(p),
                            "{f:?} {name}+{i} ^{flip:#x}: probe {p:?} is not a real entry"
                        );
                    }
                }
            }
        }
    }
}
