//! A dump as a minidump (Breakpad's format, as Crashpad and `minidump-writer` write them and
//! rust-minidump, Sentry and `minidump_stackwalk` read them): every thread with its registers
//! (`CONTEXT_AMD64`) and the top of its stack, the files mapped with their build ids
//! (`BpEL` CodeView records), the fatal signal (code, `si_code`, address) and the memory
//! around the fault, and the system (x86_64 Linux, the kernel's release).
//!
//! Written here from the dump the agent already holds: the writers in crates read a live
//! process through ptrace, and a process in its core dump cannot be traced.
use minidump_common::format as md;
use scroll::{ctx::SizeWith, Pwrite, LE};

use crate::model::dump::{Dump, DumpThread, Image};

/// `CONTEXT_AMD64 | CONTEXT_CONTROL | CONTEXT_INTEGER | CONTEXT_SEGMENTS`.
const CONTEXT_FLAGS: u32 = 0x0010_0007;

/// The minidump's bytes, built in memory (the largest is its stacks: bounded by the dump's).
pub fn write(dump: &Dump, images: &[Image], release: &str, cpus: u8) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    let streams = 5u32;
    let header = md::MINIDUMP_HEADER {
        signature: md::MINIDUMP_SIGNATURE,
        version: md::MINIDUMP_VERSION,
        stream_count: streams,
        stream_directory_rva: size::<md::MINIDUMP_HEADER>() as u32,
        checksum: 0,
        time_date_stamp: 0,
        flags: 0,
    };
    w.put(header);
    let dir_at = w.0.len();
    w.0.resize(
        dir_at + streams as usize * size::<md::MINIDUMP_DIRECTORY>(),
        0,
    );
    let mut dir = Vec::new();

    // Contexts and stacks first: the thread list and the memory list point at them.
    let placed: Vec<(
        md::MINIDUMP_LOCATION_DESCRIPTOR,
        md::MINIDUMP_MEMORY_DESCRIPTOR,
    )> = dump
        .threads
        .iter()
        .map(|t| (w.put(context(t)), w.memory(stack_of(t))))
        .collect();
    w.align();
    let start = w.0.len();
    w.put_u32(dump.threads.len() as u32);
    for (t, (ctx, stack)) in dump.threads.iter().zip(&placed) {
        w.put(md::MINIDUMP_THREAD {
            thread_id: t.tid,
            suspend_count: 0,
            priority_class: 0,
            priority: 0,
            teb: t.reg(21).unwrap_or(0),
            stack: *stack,
            thread_context: *ctx,
        });
    }
    dir.push(w.stream(md::MINIDUMP_STREAM_TYPE::ThreadListStream, start));

    let fault_mem = dump
        .around_fault
        .as_ref()
        .map(|(at, bytes)| w.memory((*at, bytes)));
    w.align();
    let start = w.0.len();
    let ranges: Vec<_> = placed.iter().map(|p| p.1).chain(fault_mem).collect();
    w.put_u32(ranges.len() as u32);
    for r in ranges {
        w.put(r);
    }
    dir.push(w.stream(md::MINIDUMP_STREAM_TYPE::MemoryListStream, start));

    let names: Vec<(u32, md::MINIDUMP_LOCATION_DESCRIPTOR)> = images
        .iter()
        .map(|i| (w.string(&i.path), w.codeview(i.build_id.as_deref())))
        .collect();
    w.align();
    let start = w.0.len();
    w.put_u32(images.len() as u32);
    for (i, (name, cv)) in images.iter().zip(names) {
        w.put(md::MINIDUMP_MODULE {
            base_of_image: i.base,
            size_of_image: i.end.saturating_sub(i.base).min(u32::MAX as u64) as u32,
            module_name_rva: name,
            cv_record: cv,
            ..Default::default()
        });
    }
    dir.push(w.stream(md::MINIDUMP_STREAM_TYPE::ModuleListStream, start));

    let crashed = dump.threads.iter().position(|t| t.crashed).unwrap_or(0);
    let fault = dump.fault.unwrap_or_default();
    w.align();
    let start = w.0.len();
    w.put(md::MINIDUMP_EXCEPTION_STREAM {
        thread_id: dump.threads.get(crashed).map_or(0, |t| t.tid),
        __align: 0,
        exception_record: md::MINIDUMP_EXCEPTION {
            exception_code: fault.signal,
            exception_flags: fault.code as u32,
            exception_address: fault.addr,
            ..Default::default()
        },
        thread_context: placed.get(crashed).map(|p| p.0).unwrap_or_default(),
    });
    dir.push(w.stream(md::MINIDUMP_STREAM_TYPE::ExceptionStream, start));

    let version = w.string(release);
    w.align();
    let start = w.0.len();
    w.put(md::MINIDUMP_SYSTEM_INFO {
        processor_architecture: md::ProcessorArchitecture::PROCESSOR_ARCHITECTURE_AMD64 as u16,
        processor_level: 0,
        processor_revision: 0,
        number_of_processors: cpus,
        product_type: 0,
        major_version: 0,
        minor_version: 0,
        build_number: 0,
        platform_id: md::PlatformId::Linux as u32,
        csd_version_rva: version,
        suite_mask: 0,
        reserved2: 0,
        cpu: md::CPU_INFORMATION { data: [0; 24] },
    });
    dir.push(w.stream(md::MINIDUMP_STREAM_TYPE::SystemInfoStream, start));

    let mut at = dir_at;
    for d in dir {
        let _ = w.0.pwrite_with(d, at, LE);
        at += size::<md::MINIDUMP_DIRECTORY>();
    }
    w.0
}

fn size<T: SizeWith<scroll::Endian>>() -> usize {
    T::size_with(&LE)
}

fn stack_of(t: &DumpThread) -> (u64, &[u8]) {
    t.stack
        .as_ref()
        .map_or((0, &[][..]), |s| (s.sp, s.data.as_slice()))
}

fn context(t: &DumpThread) -> md::CONTEXT_AMD64 {
    let r = |i: usize| t.reg(i).unwrap_or(0);
    md::CONTEXT_AMD64 {
        context_flags: CONTEXT_FLAGS,
        r15: r(0),
        r14: r(1),
        r13: r(2),
        r12: r(3),
        rbp: r(4),
        rbx: r(5),
        r11: r(6),
        r10: r(7),
        r9: r(8),
        r8: r(9),
        rax: r(10),
        rcx: r(11),
        rdx: r(12),
        rsi: r(13),
        rdi: r(14),
        rip: r(16),
        cs: r(17) as u16,
        eflags: r(18) as u32,
        rsp: r(19),
        ss: r(20) as u16,
        ds: r(23) as u16,
        es: r(24) as u16,
        fs: r(25) as u16,
        gs: r(26) as u16,
        ..Default::default()
    }
}

struct Writer(Vec<u8>);

impl Writer {
    /// Appends `v` (4-byte aligned); where it went.
    fn put<
        T: SizeWith<scroll::Endian> + scroll::ctx::TryIntoCtx<scroll::Endian, Error = scroll::Error>,
    >(
        &mut self,
        v: T,
    ) -> md::MINIDUMP_LOCATION_DESCRIPTOR {
        self.align();
        let at = self.0.len();
        let n = size::<T>();
        self.0.resize(at + n, 0);
        let _ = self.0.pwrite_with(v, at, LE);
        md::MINIDUMP_LOCATION_DESCRIPTOR {
            data_size: n as u32,
            rva: at as u32,
        }
    }

    fn put_u32(&mut self, v: u32) {
        self.align();
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn align(&mut self) {
        let n = self.0.len().next_multiple_of(4);
        self.0.resize(n, 0);
    }

    fn memory(&mut self, (start, bytes): (u64, &[u8])) -> md::MINIDUMP_MEMORY_DESCRIPTOR {
        self.align();
        let at = self.0.len();
        self.0.extend_from_slice(bytes);
        md::MINIDUMP_MEMORY_DESCRIPTOR {
            start_of_memory_range: start,
            memory: md::MINIDUMP_LOCATION_DESCRIPTOR {
                data_size: bytes.len() as u32,
                rva: at as u32,
            },
        }
    }

    /// A `MINIDUMP_STRING`: its byte length, UTF-16LE, a NUL.
    fn string(&mut self, s: &str) -> u32 {
        self.align();
        let at = self.0.len() as u32;
        let units: Vec<u16> = s.encode_utf16().collect();
        self.0
            .extend_from_slice(&((units.len() * 2) as u32).to_le_bytes());
        for u in units.iter().chain([&0]) {
            self.0.extend_from_slice(&u.to_le_bytes());
        }
        at
    }

    /// The module's CodeView record: Breakpad's `BpEL` and the build id.
    fn codeview(&mut self, build_id: Option<&[u8]>) -> md::MINIDUMP_LOCATION_DESCRIPTOR {
        let Some(id) = build_id else {
            return md::MINIDUMP_LOCATION_DESCRIPTOR::default();
        };
        self.align();
        let at = self.0.len();
        self.0
            .extend_from_slice(&(md::CvSignature::Elf as u32).to_le_bytes());
        self.0.extend_from_slice(id);
        md::MINIDUMP_LOCATION_DESCRIPTOR {
            data_size: (4 + id.len()) as u32,
            rva: at as u32,
        }
    }

    fn stream(&mut self, kind: md::MINIDUMP_STREAM_TYPE, start: usize) -> md::MINIDUMP_DIRECTORY {
        md::MINIDUMP_DIRECTORY {
            stream_type: kind as u32,
            location: md::MINIDUMP_LOCATION_DESCRIPTOR {
                data_size: (self.0.len() - start) as u32,
                rva: start as u32,
            },
        }
    }
}

/// The minidumps kept under the state directory (`dumps/`, 0700; each file 0600) within
/// their quota: the oldest go first.
pub struct Kept {
    dir: std::path::PathBuf,
    quota: crate::util::quota::Quota,
    /// What every minidump's system information says: read once.
    release: String,
    cpus: u8,
}

fn is_minidump(p: &std::path::Path) -> bool {
    p.extension().is_some_and(|e| e == "dmp")
}

impl Kept {
    pub fn open(
        state_dir: &std::path::Path,
        quota: crate::util::quota::Quota,
    ) -> std::io::Result<Kept> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("dumps");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Kept {
            dir,
            quota,
            release: crate::kernel::probe::kernel_release(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get().min(255) as u8),
        })
    }

    /// Writes the minidump of `dump` as `name`, when its quota leaves room, and removes the
    /// oldest others past it; its path.
    pub fn keep(
        &mut self,
        name: &str,
        dump: &Dump,
        images: &[Image],
    ) -> std::io::Result<std::path::PathBuf> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let bytes = write(dump, images, &self.release, self.cpus);
        let room = self.quota.room(&self.dir, is_minidump)?;
        if bytes.len() as u64 > room {
            return Err(std::io::Error::other(format!(
                "{} KiB, {} KiB left within its bound and --dumps-keep-free",
                bytes.len() >> 10,
                room >> 10
            )));
        }
        let path = self.dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&bytes)?;
        self.quota.vacuum(&self.dir, &path, is_minidump)?;
        Ok(path)
    }
}
