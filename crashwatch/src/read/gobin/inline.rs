//! Go's inline tree: the calls the compiler inlined at a pc, named and placed as Go's own
//! tracebacks print them (the runtime's `inlineUnwinder`). PCDATA table 2 gives the index of
//! the innermost inlined call at a pc (-1: none); FUNCDATA slot 3 is the tree, an array of
//! `inlinedCall` records in `go:func.*`, each naming the inlined function and a pc
//! (`parentPc`, from the function's entry) whose position is the call site, where the walk
//! goes on. Read here because no crate reads Go's tables (see [`super::pclntab`]).
use super::pclntab::{Layout, Pclntab, Place};

const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u8 = 3;
/// Deeper nesting is damage: the compiler's inlining budget keeps real trees shallow.
const DEPTH_MAX: usize = 32;

/// The frames at `pc`, innermost first: each inlined call (function, and its file and line
/// at that level), then the function that holds them at its outermost call site. `gofunc` is
/// the file's bytes from `go:func.*`, where funcdata offsets point; without it, or in a
/// table too old or too damaged for the tree, the holding function alone.
pub fn places<'a>(tab: &Pclntab<'a>, pc: u64, gofunc: Option<&[u8]>) -> Vec<Place<'a>> {
    let Some(outer) = tab.place(pc) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = pc;
    if let Some(gofunc) = gofunc {
        walk(tab, pc, gofunc, &mut out, &mut at);
    }
    let holder = if out.is_empty() {
        outer
    } else {
        // The holder at its call site: its own name, the position `parentPc` names.
        let site = tab.place(at);
        Place {
            file: site.as_ref().and_then(|p| p.file),
            line: site.as_ref().and_then(|p| p.line),
            ..outer
        }
    };
    out.push(holder);
    out
}

fn walk<'a>(tab: &Pclntab<'a>, pc: u64, gofunc: &[u8], out: &mut Vec<Place<'a>>, at: &mut u64) {
    let (size, name_off, parent_off) = match tab.layout {
        Layout::Go116 => return,
        Layout::Go118 => (20, 12, 16),
        Layout::Go120 => (16, 4, 8),
    };
    let Some(f) = tab.func_of(pc) else { return };
    let Some(tree) = tab.funcdata(&f, FUNCDATA_INL_TREE) else {
        return;
    };
    let i32_at = |o: usize| -> Option<i32> {
        Some(i32::from_le_bytes(
            gofunc.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    while out.len() < DEPTH_MAX {
        let Some(ix) = tab.pcdata(&f, PCDATA_INL_TREE_INDEX, *at) else {
            return;
        };
        let Ok(ix) = usize::try_from(ix) else {
            return; // -1: no inlined call here
        };
        let Some(call) = ix
            .checked_mul(size)
            .and_then(|o| o.checked_add(tree as usize))
        else {
            return;
        };
        let (Some(name), Some(parent)) = (i32_at(call + name_off), i32_at(call + parent_off))
        else {
            return;
        };
        let Ok(function) = u32::try_from(name)
            .map_err(drop)
            .and_then(|n| tab.name_at(n).map_err(drop))
        else {
            return;
        };
        let here = tab.place(*at);
        out.push(Place {
            function,
            entry: *at,
            file: here.as_ref().and_then(|p| p.file),
            line: here.as_ref().and_then(|p| p.line),
        });
        match f.entry.checked_add_signed(parent as i64) {
            // The call site lies inside the same function, or the tree is damage.
            Some(next) if tab.func_of(next).is_some_and(|g| g.entry == f.entry) => *at = next,
            _ => return,
        }
    }
}
