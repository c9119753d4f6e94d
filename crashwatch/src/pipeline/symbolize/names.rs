//! Names for one frame: Go code from the module's pclntab, anything else through blazesym;
//! an inlined call becomes a frame of its own, marked `inlined`, before the function it was
//! inlined into.
use blazesym::symbolize::{source, Input, Symbolized};

use super::{space::Space, unwind::Step, Frame};

pub fn name(space: &Space, step: &Step) -> Vec<Frame> {
    let mut f = Frame {
        ip: step.ip,
        found_by: step.via.as_str(),
        ..Default::default()
    };
    let addr = step.lookup();
    let Some(p) = space.find(addr) else {
        let mut why = String::from("no module is mapped at this address");
        // Modules the process had whose files could not be had have no extent: say which.
        for q in space.placed.iter().filter(|q| q.range.is_empty()) {
            if let Err(e) = &q.file {
                why += &format!("; {} not placed: {e}", q.path);
            }
        }
        f.reason = Some(why);
        return vec![f];
    };
    f.module = Some(p.path.clone()).filter(|p| !p.is_empty());
    let m = match &p.file {
        Ok(m) => m,
        Err(why) => {
            f.reason = Some(format!("module not read: {why}"));
            return vec![f];
        }
    };
    f.build_id = m.build_id.as_ref().map(|b| crate::model::hex::bytes(b));
    let svma = addr.wrapping_sub(p.bias);
    let Some(off) = m.layout.vaddr_to_offset(svma) else {
        f.reason = Some("address outside the module's file".into());
        return vec![f];
    };
    // The offset of the frame's own address (a return address's, not the call's).
    f.offset = Some(off + (step.ip - addr));
    if let Some(g) = &m.go {
        let places = g.places(m.bytes(), svma);
        if let Some((holder, inlined)) = places.split_last() {
            let mut out: Vec<Frame> = inlined
                .iter()
                .map(|p| Frame {
                    function: Some(p.function.to_string()),
                    file: p.file.map(str::to_string),
                    line: p.line,
                    inlined: true,
                    ..f.clone()
                })
                .collect();
            f.function = Some(holder.function.to_string());
            f.function_offset = Some(svma - holder.entry);
            f.file = holder.file.map(str::to_string);
            f.line = holder.line;
            out.push(f);
            return out;
        }
    }
    let (sym, path) = m.native();
    let src = source::Source::Elf(source::Elf::new(path));
    let found = sym.symbolize_single(&src, Input::FileOffset(off));
    match found {
        Ok(Symbolized::Sym(s)) => {
            let mut out = Vec::new();
            // blazesym lists inlined calls outermost first; a stack reads innermost first.
            for i in s.inlined.iter().rev() {
                let mut g = f.clone();
                g.function = Some(i.name.to_string());
                g.inlined = true;
                if let Some(ci) = &i.code_info {
                    g.file = Some(ci.to_path().display().to_string());
                    g.line = ci.line;
                }
                out.push(g);
            }
            f.function = Some(s.name.to_string());
            f.function_offset = Some(s.offset as u64);
            if let Some(ci) = &s.code_info {
                f.file = Some(ci.to_path().display().to_string());
                f.line = ci.line;
            }
            out.push(f);
            out
        }
        Ok(Symbolized::Unknown(r)) => {
            f.reason = Some(format!("no symbol: {r}"));
            vec![f]
        }
        Err(e) => {
            f.reason = Some(format!("symbolization failed: {e}"));
            vec![f]
        }
    }
}
