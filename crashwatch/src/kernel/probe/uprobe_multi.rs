//! Attaching the Go probe program to a binary as one uprobe_multi link (Linux 6.6+).
//!
//! Attached through perf events, each probe is a descriptor, and tearing it down takes an RCU
//! grace period under the kernel's global trace-event lock (~0.13 s here): an agent that had
//! probed a thousand binaries took minutes to exit, and another agent's attaches waited behind
//! it. One uprobe_multi link carries all of a binary's probes, is one descriptor, and is torn
//! down after one grace period without that lock.
//!
//! aya 0.14 cannot load a program for uprobe_multi (the kernel wants the attach type at load
//! time), so the program is loaded a second time here: the same compiled object, relocated
//! against the maps aya already created (so both copies share the ring buffer and the
//! configuration), loaded with `BPF_TRACE_UPROBE_MULTI`. On older kernels the load fails and
//! the caller keeps using aya's perf-event attach.
use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::Map;
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};

pub struct MultiProgram {
    fd: OwnedFd,
}

/// The descriptor of a map of the kinds the Go program uses.
fn map_fd(m: &Map) -> Option<BorrowedFd<'_>> {
    let data = match m {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::LruHashMap(d)
        | Map::HashMap(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

/// The maps' descriptors by name, for [`MultiProgram::load`]; they stay the object's, open
/// as long as it lives.
pub fn map_fds(ebpf: &aya::Ebpf) -> Vec<(String, RawFd)> {
    ebpf.maps()
        .filter_map(|(n, m)| Some((n.to_string(), map_fd(m)?.as_raw_fd())))
        .collect()
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<RawFd> {
    // SAFETY: attr is a valid, fully initialised bpf_attr for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as RawFd)
    }
}

impl MultiProgram {
    /// Loads program `name` from `object` for uprobe_multi, its maps resolved to those of
    /// `ebpf` (the same object, loaded by aya). Fails on kernels without uprobe_multi.
    pub fn load(object: &[u8], fds: &[(String, RawFd)], name: &str) -> Result<MultiProgram> {
        let mut obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|(section, _)| *section).collect();
        let maps = std::mem::take(&mut obj.maps);
        let pairs = fds
            .iter()
            .filter_map(|(n, fd)| Some((n.as_str(), *fd, maps.get(n)?)));
        obj.relocate_maps(pairs, &text_sections)
            .map_err(|e| anyhow!("{e}"))
            .context("relocating maps")?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| anyhow!("{e}"))
            .context("relocating calls")?;
        let prog = obj
            .programs
            .get(name)
            .with_context(|| format!("program {name} missing from the object"))?;
        let insns: &[bpf_insn] = &obj.functions[&prog.function_key()].instructions;
        let license = CString::new("GPL")?;
        // SAFETY: an all-zero bpf_attr is the kernel's "field unused".
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the BPF_PROG_LOAD member of the union.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
        load.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
        load.insns = insns.as_ptr() as u64;
        load.insn_cnt = insns.len() as u32;
        load.license = license.as_ptr() as u64;
        for (d, s) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        let mut log = vec![0u8; 64 * 1024];
        let fd = match bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Retry with the verifier's log: an older kernel says it has no such attach
                // type; anything else is ours to see.
                // SAFETY: as above.
                let load = unsafe { &mut attr.__bindgen_anon_3 };
                load.log_level = 1;
                load.log_buf = log.as_mut_ptr() as u64;
                load.log_size = log.len() as u32;
                let e2 = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).err().unwrap_or(e);
                let text = String::from_utf8_lossy(&log);
                let text = text.trim_end_matches('\0').trim();
                bail!("BPF_PROG_LOAD for uprobe_multi: {e2}{}", tail(text))
            }
            Err(e) => bail!("BPF_PROG_LOAD for uprobe_multi: {e}"),
        };
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(MultiProgram {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Attaches the program at each (file offset, cookie) of `target` (a path the kernel opens
    /// now, such as `/proc/self/fd/N`), for every process; the link lives as long as the
    /// returned descriptor.
    pub fn attach(&self, target: &Path, probes: &[(u64, u64)]) -> Result<OwnedFd> {
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(target.as_os_str().as_bytes())?;
        let offsets: Vec<u64> = probes.iter().map(|p| p.0).collect();
        let cookies: Vec<u64> = probes.iter().map(|p| p.1).collect();
        // SAFETY: as in load.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the BPF_LINK_CREATE member of the union.
        let link = unsafe { &mut attr.link_create };
        link.__bindgen_anon_1.prog_fd = self.fd.as_raw_fd() as u32;
        link.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
        // SAFETY: writing the uprobe_multi member of the inner union.
        let multi = unsafe { &mut link.__bindgen_anon_3.uprobe_multi };
        multi.path = path.as_ptr() as u64;
        multi.offsets = offsets.as_ptr() as u64;
        multi.cookies = cookies.as_ptr() as u64;
        multi.cnt = probes.len() as u32;
        let fd = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
            .with_context(|| format!("BPF_LINK_CREATE uprobe_multi on {}", target.display()))?;
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The end of a verifier log, where the reason is.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("\n{}", lines[lines.len().saturating_sub(6)..].join("\n"))
}

/// Pins a BPF object (a link) at `path` in a BPF filesystem (BPF_OBJ_PIN).
pub fn pin_fd(fd: RawFd, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("{} holds a NUL byte", path.display()))?;
    // SAFETY: an all-zero bpf_attr is valid; the obj_pin fields are set below.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_OBJ_PIN member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_4 };
    u.bpf_fd = fd as u32;
    u.pathname = c.as_ptr() as u64;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}
