//! The minidump the agent keeps, read as a crash-reporting service reads it: rust-minidump
//! parses its streams, and rust-minidump's own stack walker (minidump-unwind, unwinding with
//! each module's CFI from the files on this host) walks every thread from the minidump's
//! registers and stack memory alone. Its walk must find the return addresses the report's
//! threads list, in the same order: a minidump whose stacks or registers were cut, shifted
//! or misplaced would walk elsewhere.

use std::path::Path;

use minidump::{
    Minidump, MinidumpException, MinidumpMemoryList, MinidumpModuleList, MinidumpSystemInfo,
    MinidumpThreadList, Module, UnifiedMemoryList,
};
use minidump_unwind::{
    debuginfo::DebugInfoSymbolProvider, walk_stack, CallStack, FrameTrust, SystemInfo,
};
use serde_json::Value;

use crate::common;

/// The minidump holds what the report says: each thread with its registers and the top of
/// its stack, the program with its build id, the fault, the system; and rust-minidump's walk
/// of each thread agrees with the report's stack for it.
pub(crate) fn assert_agrees(path: &Path, r: &Value) {
    let md = Minidump::read_path(path).expect("rust-minidump reads it");
    let sys: MinidumpSystemInfo = md.get_stream().unwrap();
    assert_eq!(
        (sys.os, sys.cpu),
        (
            minidump::system_info::Os::Linux,
            minidump::system_info::Cpu::X86_64
        )
    );
    let threads: MinidumpThreadList = md.get_stream().unwrap();
    let memory: MinidumpMemoryList = md.get_stream().unwrap();
    let memory = UnifiedMemoryList::Memory(memory);
    let modules: MinidumpModuleList = md.get_stream().unwrap();
    let ours = r["threads"].as_array().unwrap();
    assert_eq!(threads.threads.len(), ours.len());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let provider = rt.block_on(DebugInfoSymbolProvider::new(&sys, &modules));
    let info = SystemInfo {
        os: sys.os,
        os_version: None,
        os_build: None,
        cpu: sys.cpu,
        cpu_info: None,
        cpu_microcode_version: None,
        cpu_count: 1,
    };
    for (t, o) in threads.threads.iter().zip(ours) {
        assert_eq!(u64::from(t.raw.thread_id), o["tid"].as_u64().unwrap());
        let ctx = t.context(&sys, None).expect("a context");
        assert_eq!(
            ctx.get_instruction_pointer(),
            common::hex(&o["registers"]["ip"])
        );
        let sp = common::hex(&o["registers"]["sp"]);
        assert_eq!(ctx.get_stack_pointer(), sp);
        let stack = t.stack_memory(&memory).expect("its stack");
        assert_eq!(stack.base_address(), sp);
        let mut walked = CallStack::with_context(ctx.into_owned());
        rt.block_on(walk_stack(
            0,
            (),
            &mut walked,
            Some(stack),
            &modules,
            &info,
            &provider,
        ));
        assert_walk_agrees(o, &walked);
    }
    let ex: MinidumpException = md.get_stream().unwrap();
    assert_eq!(ex.raw.exception_record.exception_code, 11);
    assert_eq!(
        u64::from(ex.get_crashing_thread_id()),
        r["tid"].as_u64().unwrap()
    );
    assert_eq!(
        ex.get_crash_address(sys.os, sys.cpu),
        0,
        "a null pointer's write"
    );
    let exe = r["exe"].as_str().unwrap();
    let m = modules
        .iter()
        .find(|m| m.code_file() == exe)
        .unwrap_or_else(|| panic!("no module {exe}"));
    let frame = r["stack"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["module"] == exe)
        .unwrap();
    assert_eq!(
        m.code_identifier().unwrap().to_string(),
        frame["build_id"].as_str().unwrap()
    );
    let ip = common::hex(&frame["ip"]);
    assert!(
        m.base_address() <= ip && ip < m.base_address() + m.size(),
        "the crash's frame is in the program's image"
    );
}

/// The walk's frames found from the context and by CFI are exactly the report's frames (one
/// per return address: the report lists inlined calls at the same address as frames of
/// their own), in order, to the stack's end. Were the walk to go on by scanning the stack for
/// what looks like a return address, those guesses are not compared.
fn assert_walk_agrees(ours: &Value, walked: &CallStack) {
    let mut want: Vec<u64> = ours["stack"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["ip"].as_str().map(|_| common::hex(&f["ip"])))
        .collect();
    want.dedup();
    let got: Vec<u64> = walked
        .frames
        .iter()
        .take_while(|f| matches!(f.trust, FrameTrust::Context | FrameTrust::CallFrameInfo))
        .map(|f| f.resume_address)
        .collect();
    let name = ours["name"].as_str().unwrap_or("?");
    assert_eq!(
        format!("{got:x?}"),
        format!("{want:x?}"),
        "thread {name}: rust-minidump's walk (left) differs from the report's stack (right)"
    );
}
