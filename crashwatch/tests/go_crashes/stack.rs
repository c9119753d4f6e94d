//! A Go report's stack checked against the runtime's own traceback of the dying goroutine.
use serde_json::Value;

use super::common::gobuild::Flavour;

/// The report's stack against the runtime's own traceback of the dying goroutine (printed
/// to stderr, parsed into `goroutines[0]`): every frame named, Go frames with file and line,
/// and each of the program's frames the runtime printed found in the same order with the
/// same line. A crash in C shows the C frames, the cgo call, and past it the goroutine's
/// frames on the other stack.
pub(super) fn stack_agrees_with_the_runtime(
    rep: &Value,
    g: &Value,
    mode: &str,
    f: Flavour,
) -> Result<(), String> {
    let stack = rep["stack"].as_array().ok_or("no stack")?;
    let fs: Vec<(&str, u64)> = stack
        .iter()
        .map(|x| {
            (
                x["function"].as_str().unwrap_or("?"),
                x["line"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // Taken at the fatal signal or at the runtime's fatal path alike, the stack copy is
    // unwound in userspace.
    check!(
        stack.first().is_some_and(|x| x["found_by"] == "cfi"),
        "the first frame was not unwound from the stack copy; signal {}, go registers {}, \
         stack (ip module offset found_by reason):\n{}",
        rep["signal"]["name"],
        rep["go"]["registers"]["ip"],
        how_found(stack)
    );
    // Every mode but a crash in C reaches the runtime's fatal path, which takes the registers;
    // without a signal the stack starts where they say.
    if mode != "cgo" {
        let ip = rep["go"]["registers"]["ip"].as_str();
        check!(
            ip.is_some(),
            "no registers at the fatal path: {}",
            rep["go"]
        );
        check!(
            !rep["signal"].is_null() || ip == stack[0]["ip"].as_str(),
            "registers' ip {ip:?} is not the first frame's {}",
            stack[0]["ip"]
        );
    }
    if mode == "cgo" {
        check!(
            fs.iter().any(|(n, _)| *n == "runtime.asmcgocall"),
            "cgo stack lacks runtime.asmcgocall: {fs:?}"
        );
        // Without symbols nothing names the C function (gdb prints `??` too).
        if !f.stripped() {
            check!(fs[0].0.contains("crash_in_c"), "cgo stack top: {fs:?}");
        }
    }
    // Past the cgo call, the goroutine's frames: checked below against the runtime's.
    let past_c = stack
        .iter()
        .skip_while(|x| mode == "cgo" && x["function"] != "runtime.asmcgocall");
    for x in past_c {
        check!(x["function"].is_string(), "unnamed frame {x}");
        let go_frame = x["function"].as_str().is_some_and(|n| n.contains('.'));
        check!(
            !go_frame || (x["file"].is_string() && x["line"].is_u64()),
            "Go frame without file and line: {x}"
        );
    }
    // A deadlock is found by the scheduler, on no goroutine's stack: nothing of main's runs.
    if mode == "deadlock" {
        return Ok(());
    }
    // The runtime throws a stack overflow on the scheduler's stack, after `morestack`
    // switched to it (Go 1.19 throws before switching): the recursion is on the goroutine's
    // stack, which is not copied.
    if mode == "overflow" && fs.iter().any(|(n, _)| *n == "runtime.morestack") {
        return Ok(());
    }
    let theirs: Vec<(&str, u64)> = g["frames"]
        .as_array()
        .ok_or("no goroutine frames")?
        .iter()
        .filter_map(|x| Some((x["function"].as_str()?, x["line"].as_u64()?)))
        .filter(|(n, _)| n.starts_with("main."))
        .collect();
    check!(!theirs.is_empty(), "the runtime printed no frame of main");
    // An overflowing recursion is deeper than any walk: its top frames must agree.
    let theirs = if mode == "overflow" {
        &theirs[..theirs.len().min(20)]
    } else {
        &theirs[..]
    };
    if mode == "inlined" {
        check!(
            stack
                .iter()
                .any(|x| x["function"] == "main.mustPositive" && x["inlined"] == true),
            "no inlined main.mustPositive frame in {fs:?}"
        );
    }
    let mut rest = fs.iter();
    for want in theirs {
        check!(
            rest.any(|got| got == want),
            "runtime's frame {want:?} not in order in the stack {fs:?}"
        );
    }
    Ok(())
}

/// One line per frame: where it is and how it was found, for a failure's message.
fn how_found(stack: &[Value]) -> String {
    stack
        .iter()
        .map(|x| {
            format!(
                "    {} {} {} {} {}",
                x["ip"].as_str().unwrap_or("?"),
                x["module"].as_str().unwrap_or("-"),
                x["offset"].as_str().unwrap_or("-"),
                x["found_by"].as_str().unwrap_or("?"),
                x["reason"].as_str().unwrap_or(""),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
