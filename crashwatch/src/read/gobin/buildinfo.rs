//! Go build info (`go version -m`): the toolchain version, main module and `-buildvcs` stamps,
//! read from the `.go.buildinfo` blob the linker writes into every Go binary since 1.13.
//! The inline-string format (Go 1.18+) is read directly; older binaries point at strings
//! elsewhere, which the caller resolves with `read_ptr_string`.
pub use crate::model::go::BuildInfo;
use anyhow::{bail, Result};

const MAGIC: &[u8] = b"\xff Go buildinf:";

/// (Go version, module info text) from the blob at the start of `.go.buildinfo`.
pub fn read_blob(
    blob: &[u8],
    read_ptr_string: impl Fn(u64) -> Option<String>,
) -> Result<(String, String)> {
    if blob.len() < 32 || &blob[..14] != MAGIC {
        bail!("no Go build info magic");
    }
    let (ptr_size, flags) = (blob[14] as usize, blob[15]);
    if flags & 2 != 0 {
        let mut rest = &blob[32..];
        let version = String::from_utf8_lossy(varint_bytes(&mut rest)?).into_owned();
        let modinfo = varint_bytes(&mut rest)?;
        return Ok((version, strip_sentinels(modinfo)));
    }
    if ptr_size != 8 {
        bail!("build info pointer size {ptr_size} unsupported");
    }
    let p = |at: usize| u64::from_le_bytes(blob[at..at + 8].try_into().unwrap());
    let version = read_ptr_string(p(16)).unwrap_or_default();
    let modinfo = read_ptr_string(p(24)).unwrap_or_default();
    Ok((version, strip_sentinels(modinfo.as_bytes())))
}

fn varint_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8]> {
    let Some((n, i)) = super::uvarint(rest, 0) else {
        bail!("truncated build info or a bad varint in it")
    };
    let Some(s) = rest.get(i..i.saturating_add(n as usize)) else {
        bail!("truncated build info string")
    };
    *rest = &rest[i + n as usize..];
    Ok(s)
}

/// Module info is wrapped in 16-byte sentinels (not UTF-8: strip them before decoding).
fn strip_sentinels(b: &[u8]) -> String {
    let inner = if b.len() >= 33 {
        &b[16..b.len() - 16]
    } else {
        b
    };
    String::from_utf8_lossy(inner).into_owned()
}

/// Parses the module info text (`path`, `mod`, `build key=value` lines).
pub fn parse_modinfo(text: &str) -> BuildInfo {
    let mut b = BuildInfo::default();
    for line in text.lines() {
        let mut f = line.split('\t');
        match f.next() {
            Some("path") => b.path = f.next().map(str::to_string),
            Some("mod") => {
                b.main_module = f.next().map(str::to_string);
                b.main_version = f.next().map(str::to_string);
            }
            Some("build") => {
                let Some((k, v)) = f.next().and_then(|kv| kv.split_once('=')) else {
                    continue;
                };
                let v = unquote(v);
                match k {
                    "vcs" => b.vcs = Some(v),
                    "vcs.revision" => b.vcs_revision = Some(v),
                    "vcs.time" => b.vcs_time = Some(v),
                    "vcs.modified" => b.vcs_modified = Some(v == "true"),
                    "GOOS" => b.goos = Some(v),
                    "GOARCH" => b.goarch = Some(v),
                    "CGO_ENABLED" => b.cgo_enabled = Some(v == "1"),
                    "-ldflags" => b.ldflags = Some(v),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    b
}

/// `go version -m` quotes values with spaces Go-style.
fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_lines() {
        let b = parse_modinfo(
            "path\texample.com/x\nmod\texample.com/x\t(devel)\t\ndep\tgolang.org/y\tv1.0.0\th1:..\n\
             build\t-ldflags=\"-s -w\"\nbuild\tCGO_ENABLED=0\nbuild\tGOOS=linux\nbuild\tvcs.revision=abc\n\
             build\tvcs.modified=true\n",
        );
        assert_eq!(b.path.as_deref(), Some("example.com/x"));
        assert_eq!(b.main_version.as_deref(), Some("(devel)"));
        assert_eq!(b.ldflags.as_deref(), Some("-s -w"));
        assert_eq!((b.cgo_enabled, b.vcs_modified), (Some(false), Some(true)));
        assert_eq!(b.vcs_revision.as_deref(), Some("abc"));
    }

    #[test]
    fn truncated_blob_is_an_error() {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&[8, 2]);
        blob.resize(32, 0);
        blob.push(0x80); // varint that never ends
        assert!(read_blob(&blob, |_| None).is_err());
        assert!(read_blob(b"not go", |_| None).is_err());
    }
}
