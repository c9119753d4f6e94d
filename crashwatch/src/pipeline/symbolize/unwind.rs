//! Unwinding from the registers and the stack copy taken at the fatal signal. Go code is
//! stepped the way Go's own runtime steps it, by the function's `pcsp` table in the pclntab
//! (exact at any instruction, the first included, with or without a frame pointer, and in
//! stripped binaries that carry no other unwind information); everything else with
//! framehop, from each module's `.eh_frame` (through `.eh_frame_hdr`) or `.debug_frame`,
//! falling back to frame pointers where a module has none. One walk thus passes through C
//! code built without frame pointers and through cgo calls alike.
//!
//! The kernel's own frame-pointer walk (up to 127 frames, not limited by the copy's size)
//! finishes a walk the copy could not: [`merge`] splices it on where the two agree.
use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
};

use super::{files::Section, space::Space};
use crate::kernel::decode::Stack;

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

/// A CFI walk, and whether it ended where the stack ends (a root function, a zero return
/// address) rather than where the copy or the unwind information ran out.
#[derive(Debug, Default)]
pub struct Walk {
    pub steps: Vec<Step>,
    pub complete: bool,
    /// The walk stopped at a Go function that had switched stacks (asmcgocall running C code
    /// on the scheduler's stack, systemstack) with the frame pointer the thread had at the
    /// signal: nothing below changed RBP, so the kernel's frame-pointer walk, which started
    /// from that RBP, goes on from here on the other stack (see [`merge`]).
    pub switched_with_signal_bp: bool,
}

/// Walks the stack copy from `ip`, `sp`, `bp`.
pub fn cfi(space: &Space, st: &Stack, ip: u64, sp: u64, bp: u64) -> Walk {
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
    let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
    let mut at = FrameAddress::from_instruction_pointer(ip);
    let mut walk = Walk::default();
    loop {
        let (ip, is_return) = match at {
            FrameAddress::InstructionPointer(a) => (a, false),
            FrameAddress::ReturnAddress(a) => (a.get(), true),
        };
        walk.steps.push(Step {
            ip,
            is_return,
            via: Via::Cfi,
        });
        if walk.steps.len() >= DEPTH {
            break;
        }
        let stepped = match go_step(space, at, &mut regs, &mut read) {
            Some(r) => r,
            None => unwinder
                .unwind_frame(at, &mut regs, &mut cache, &mut read)
                .map_err(|_| ()),
        };
        match stepped {
            Ok(Some(ra)) => match FrameAddress::from_return_address(ra) {
                Some(next) => at = next,
                None => break,
            },
            Ok(None) => {
                walk.complete = true;
                break;
            }
            Err(()) => {
                walk.switched_with_signal_bp = regs.bp() == bp
                    && matches!(at, FrameAddress::ReturnAddress(_))
                    && space
                        .go_rule(at.address_for_lookup())
                        .is_some_and(|r| r.sp_write);
                break;
            }
        }
    }
    walk
}

/// One step out of a Go frame by its `pcsp` delta, as the runtime's traceback takes it:
/// `None` when `at` is not Go code with a table, `Ok(None)` where Go's own traceback ends.
fn go_step(
    space: &Space,
    at: FrameAddress,
    regs: &mut UnwindRegsX86_64,
    read: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Option<Result<Option<u64>, ()>> {
    let rule = space.go_rule(at.address_for_lookup())?;
    if rule.top {
        return Some(Ok(None));
    }
    // A function that sets SP by hand (systemstack, asmcgocall, morestack) has no delta
    // for its caller once it has switched stacks; the runtime stops there too.
    if rule.sp_write && matches!(at, FrameAddress::ReturnAddress(_)) {
        return Some(Err(()));
    }
    let sp = regs.sp();
    let at_ra = sp.checked_add(rule.sp_delta as u64)?;
    let step = (|| {
        let ra = read(at_ra)?;
        // The prologue pushes the caller's frame pointer first, just below the return
        // address: restore it for code above that walks by frame pointers.
        if rule.sp_delta >= 8 {
            regs.set_bp(read(at_ra - 8)?);
        }
        regs.set_sp(at_ra + 8);
        regs.set_ip(ra);
        Ok(if ra == 0 { None } else { Some(ra) })
    })();
    Some(step)
}

/// The CFI walk, finished by the kernel's frame-pointer walk where the CFI walk stopped short;
/// the frame-pointer walk alone when CFI found nothing past the first frame.
///
/// A CFI walk that reached the stack's end is kept whole: in code without frame pointers the
/// kernel's walk follows whatever RBP holds and is longer only because it is junk. Elsewhere
/// the two are spliced at the last return address both walks found (never the shared first
/// address alone, which says nothing about the frames above it). A walk that stopped at a Go
/// stack switch with the signal's RBP untouched goes on with everything the kernel's walk
/// found past its first address: the frames of the goroutine that made the switch (its
/// direct caller, whose return address only the other stack holds, is not among them).
pub fn merge(cfi: Walk, fp: &[u64]) -> Vec<Step> {
    let fp_steps = || {
        fp.iter().enumerate().map(|(i, &ip)| Step {
            ip,
            is_return: i > 0,
            via: Via::Fp,
        })
    };
    if cfi.steps.len() <= 1 {
        return fp_steps().take(DEPTH).collect();
    }
    let mut out = cfi.steps;
    if cfi.switched_with_signal_bp {
        out.extend(fp_steps().skip(1));
    } else if !cfi.complete {
        let meet = out.iter().enumerate().skip(1).rev().find_map(|(i, s)| {
            fp.iter()
                .skip(1)
                .position(|&ip| ip == s.ip)
                .map(|k| (i, k + 1))
        });
        if let Some((i, k)) = meet.filter(|&(i, k)| fp.len() - k > out.len() - i) {
            out.truncate(i + 1);
            out.extend(fp_steps().skip(k + 1));
        }
    }
    out.truncate(DEPTH);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(ips: &[u64], complete: bool) -> Walk {
        Walk {
            steps: ips
                .iter()
                .enumerate()
                .map(|(i, &ip)| Step {
                    ip,
                    is_return: i > 0,
                    via: Via::Cfi,
                })
                .collect(),
            complete,
            switched_with_signal_bp: false,
        }
    }

    fn ips(s: &[Step]) -> Vec<(u64, &'static str)> {
        s.iter().map(|s| (s.ip, s.via.as_str())).collect()
    }

    #[test]
    fn a_complete_cfi_walk_is_not_replaced_by_a_longer_junk_fp_walk() {
        // The C++ abort case: RBP held a data pointer, so the kernel's walk repeats one
        // address 127 times; it shares only the first address with CFI.
        let junk: Vec<u64> = std::iter::once(1).chain([0x99; 126]).collect();
        let got = merge(walk(&[1, 2, 3, 4], true), &junk);
        assert_eq!(ips(&got), [(1, "cfi"), (2, "cfi"), (3, "cfi"), (4, "cfi")]);
    }

    #[test]
    fn an_unfinished_cfi_walk_is_not_spliced_at_the_first_address_alone() {
        let junk: Vec<u64> = std::iter::once(1).chain([0x99; 126]).collect();
        let got = merge(walk(&[1, 2, 3], false), &junk);
        assert_eq!(ips(&got), [(1, "cfi"), (2, "cfi"), (3, "cfi")]);
    }

    #[test]
    fn an_unfinished_cfi_walk_is_finished_by_fp_where_they_agree() {
        // CFI ran out of copied stack at 3; the kernel walked further from there.
        let got = merge(walk(&[1, 2, 3], false), &[1, 3, 5, 6]);
        assert_eq!(
            ips(&got),
            [(1, "cfi"), (2, "cfi"), (3, "cfi"), (5, "fp"), (6, "fp")]
        );
    }

    #[test]
    fn a_walk_stopped_at_a_go_stack_switch_goes_on_by_the_kernels_walk() {
        // C code on the scheduler's stack left RBP at the goroutine's frame: the kernel's
        // walk skipped the C frames and went on through the goroutine's.
        let mut w = walk(&[1, 2, 3], false);
        w.switched_with_signal_bp = true;
        let got = merge(w, &[1, 7, 8]);
        assert_eq!(
            ips(&got),
            [(1, "cfi"), (2, "cfi"), (3, "cfi"), (7, "fp"), (8, "fp")]
        );
    }

    #[test]
    fn no_cfi_past_the_first_frame_means_the_fp_walk() {
        let got = merge(walk(&[1], false), &[1, 7, 8]);
        assert_eq!(ips(&got), [(1, "fp"), (7, "fp"), (8, "fp")]);
    }
}
