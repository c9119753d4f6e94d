//! A CPython thread's own frames ([`crate::model::dump::PyStacks`]) put among its native
//! frames where the eval loop ran them, as py-spy's `--native` shows them: each native
//! `_PyEval_EvalFrameDefault` frame is preceded by the Python frames of that call of the
//! loop (innermost first), so the C an extension ran and the Python that called it read as one
//! stack.
use crate::model::{
    dump::{DumpThread, PyFrame, PyStacks, REG_FS_BASE},
    frame::Frame,
};

/// The Python frames of `t`, when the interpreter's thread states name it: by
/// `pthread_self()`, which is the thread's `fs_base` on x86_64, else by its id (the same in
/// the process's pid namespace and the agent's outside containers).
pub fn frames_of<'a>(py: &'a PyStacks, t: &DumpThread) -> Option<&'a [PyFrame]> {
    let fs = t.reg(REG_FS_BASE).filter(|&f| f != 0);
    py.threads
        .iter()
        .find(|p| fs == Some(p.thread_id))
        .or_else(|| {
            py.threads
                .iter()
                .find(|p| p.native_id == Some(u64::from(t.tid)))
        })
        .map(|p| p.frames.as_slice())
        .filter(|f| !f.is_empty())
}

/// `native` with `py` put before each eval-loop frame, one call's frames each; frames left
/// when the native stack names no more eval-loop frames (an interpreter without symbols, a
/// stack cut short) follow it.
pub fn interleave(native: &[Frame], py: &[PyFrame]) -> Vec<Frame> {
    let mut calls = py.split_inclusive(|f| f.entry);
    let mut out = Vec::with_capacity(native.len() + py.len());
    for f in native {
        let eval = f
            .function
            .as_deref()
            .is_some_and(|n| n.starts_with("_PyEval_EvalFrameDefault"));
        if eval {
            if let Some(call) = calls.next() {
                out.extend(call.iter().map(frame));
            }
        }
        out.push(f.clone());
    }
    out.extend(calls.flatten().map(frame));
    out
}

fn frame(p: &PyFrame) -> Frame {
    Frame {
        function: Some(p.function.clone()),
        file: Some(p.file.clone()),
        line: p.line,
        found_by: "python",
        ..Frame::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(names: &[&str]) -> Vec<Frame> {
        names
            .iter()
            .map(|n| Frame {
                function: Some(n.to_string()),
                found_by: "cfi",
                ..Frame::default()
            })
            .collect()
    }

    fn py(name: &str, entry: bool) -> PyFrame {
        PyFrame {
            function: name.into(),
            file: "app.py".into(),
            line: Some(1),
            entry,
        }
    }

    #[test]
    fn each_call_of_the_eval_loop_gets_its_frames() {
        let n = native(&[
            "memcpy",
            "ext_crash",
            "_PyEval_EvalFrameDefault",
            "PyObject_Call",
            "_PyEval_EvalFrameDefault",
            "main",
        ]);
        let p = [py("inner", false), py("middle", true), py("outer", true)];
        let got: Vec<_> = interleave(&n, &p)
            .iter()
            .map(|f| f.function.clone().unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "memcpy",
                "ext_crash",
                "inner",
                "middle",
                "_PyEval_EvalFrameDefault",
                "PyObject_Call",
                "outer",
                "_PyEval_EvalFrameDefault",
                "main"
            ]
        );
        // No eval frame named: the Python frames follow the native ones.
        let got = interleave(&native(&["??"]), &p);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3].function.as_deref(), Some("outer"));
        assert_eq!(got[3].found_by, "python");
    }
}
