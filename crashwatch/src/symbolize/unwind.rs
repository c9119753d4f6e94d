//! Unwinding from the registers and the stack copy taken at the fatal signal, with framehop:
//! each module's `.eh_frame` (through `.eh_frame_hdr`) or `.debug_frame`, falling back to
//! frame pointers where a module has no unwind information (Go code), so a walk passes
//! through C code built without frame pointers and through cgo calls alike.
//!
//! The kernel's own frame-pointer walk (up to 127 frames, not limited by the copy's size)
//! finishes a walk the copy could not: [`merge`] splices it on where the two agree.
use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
};

use super::{files::Section, space::Space};
use crate::decode::Stack;

/// How a frame was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The kernel's frame-pointer walk.
    Fp,
    /// Unwound in userspace from the stack copy and the module's CFI.
    Cfi,
    /// A Go probe's return address: the probed function's direct caller.
    Go,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Fp => "fp",
            Via::Cfi => "cfi",
            Via::Go => "go",
        }
    }
}

/// A frame's address: the first is where the thread was, the rest are return addresses.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub ip: u64,
    pub is_return: bool,
    pub via: Via,
}

impl Step {
    /// The address to look up: a return address points past its call.
    pub fn lookup(&self) -> u64 {
        if self.is_return {
            self.ip.saturating_sub(1)
        } else {
            self.ip
        }
    }
}

pub const DEPTH: usize = 127;

/// Walks the stack copy from `ip`, `sp`, `bp`.
pub fn cfi(space: &Space, st: &Stack, ip: u64, sp: u64, bp: u64) -> Vec<Step> {
    let mut unwinder: UnwinderX86_64<Section> = UnwinderX86_64::new();
    for p in &space.placed {
        let Ok(f) = &p.file else { continue };
        if p.range.is_empty() {
            continue;
        }
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: f.text.as_ref().map(|s| s.svma.clone()),
            text: f.section(&f.text),
            eh_frame_svma: f.eh_frame.as_ref().map(|s| s.svma.clone()),
            eh_frame: f.section(&f.eh_frame),
            eh_frame_hdr_svma: f.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
            eh_frame_hdr: f.section(&f.eh_frame_hdr),
            debug_frame: f.section(&f.debug_frame),
            stubs_svma: None,
            stub_helper_svma: None,
            got_svma: None,
            unwind_info: None,
            text_segment_svma: None,
            text_segment: None,
        };
        unwinder.add_module(Module::new(p.path.clone(), p.range.clone(), p.bias, info));
    }
    let mut cache = CacheX86_64::<_>::new();
    let mut read = |addr: u64| st.word(addr).ok_or(());
    let mut it = unwinder.iter_frames(ip, UnwindRegsX86_64::new(ip, sp, bp), &mut cache, &mut read);
    let mut out = Vec::new();
    while let Ok(Some(f)) = it.next() {
        let (ip, is_return) = match f {
            FrameAddress::InstructionPointer(a) => (a, false),
            FrameAddress::ReturnAddress(a) => (a.get(), true),
        };
        out.push(Step {
            ip,
            is_return,
            via: Via::Cfi,
        });
        if out.len() >= DEPTH {
            break;
        }
    }
    out
}

/// The CFI walk, finished by the kernel's frame-pointer walk from where they meet; the
/// frame-pointer walk alone when CFI found nothing past the first frame.
pub fn merge(cfi: Vec<Step>, fp: &[u64]) -> Vec<Step> {
    let fp_steps = || {
        fp.iter().enumerate().map(|(i, &ip)| Step {
            ip,
            is_return: i > 0,
            via: Via::Fp,
        })
    };
    if cfi.len() <= 1 {
        return fp_steps().take(DEPTH).collect();
    }
    let mut out = cfi;
    // Splice at the last CFI frame the frame-pointer walk also has.
    let meet = out
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, s)| fp.iter().position(|&ip| ip == s.ip).map(|k| (i, k)));
    if let Some((i, k)) = meet.filter(|&(i, k)| fp.len() - k > out.len() - i) {
        out.truncate(i + 1);
        out.extend(fp_steps().skip(k + 1));
    }
    out.truncate(DEPTH);
    out
}
