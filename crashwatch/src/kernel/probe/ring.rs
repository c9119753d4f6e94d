//! The kernel's ring buffer (`EVENTS`), read with the release in the agent's hands.
//!
//! aya's `RingBuf` gives a record back to the kernel the moment its item is dropped. That is
//! too early for an agent whose kernel state outlives it: a crash read but not yet written
//! when the agent is killed would be gone for the next one. Here reading and giving back are
//! two steps: [`Ring::next`] reads the next record and moves a private cursor only;
//! [`Ring::release`] moves the kernel's consumer position, which is where the next reader of
//! the pinned ring buffer starts. The agent releases up to the oldest record that a crash not
//! yet written still needs (see `agent::hold`).
//!
//! The layout is the kernel's (`kernel/bpf/ringbuf.c`): a consumer page the reader writes, a
//! producer page it only reads, then the data pages mapped twice in a row, so a record that
//! wraps around the end reads as one slice. Each record has an 8-byte header (length with
//! a busy and a discard bit) and is padded to 8 bytes.
//!
//! The kernel wakes a reader only for a record written where the consumer position stands:
//! while records are held, the agent polls ([`Ring::holding`]), and after each release it
//! looks again ([`Ring::has_next`]) for records committed while the position stood behind.
use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: u64 = 8;

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, prot: i32, offset: usize) -> Result<Mapping> {
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks length and offset.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the ring buffer");
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

pub struct Ring {
    map: MapData,
    consumer: Mapping,
    /// The producer page, then the data pages twice.
    producer: Mapping,
    page: usize,
    mask: u64,
    /// The next record to read.
    read: u64,
    /// The kernel's consumer position as this reader last set it.
    released: u64,
}

// SAFETY: the mappings are owned by the Ring and only touched through &mut self or atomics.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps `map` (a `BPF_MAP_TYPE_RINGBUF`). Reading starts where the last reader released.
    pub fn new(map: Map) -> Result<Ring> {
        let Map::RingBuf(map) = map else {
            bail!("EVENTS is not a ring buffer");
        };
        let size = map.info()?.max_entries() as usize;
        if !size.is_power_of_two() {
            bail!("ring buffer of {size} bytes: not a power of two");
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page)?;
        let mut ring = Ring {
            map,
            consumer,
            producer,
            page,
            mask: size as u64 - 1,
            read: 0,
            released: 0,
        };
        ring.released = ring.consumer_pos().load(Ordering::Acquire);
        ring.read = ring.released;
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page starts with the kernel's `unsigned long consumer_pos`,
        // aligned, and lives as long as self.
        unsafe { &*(self.consumer.ptr as *const AtomicU64) }
    }

    fn producer_pos(&self) -> u64 {
        // SAFETY: as above for the producer page; the kernel stores it with release order.
        unsafe { &*(self.producer.ptr as *const AtomicU64) }.load(Ordering::Acquire)
    }

    /// The next committed record after the cursor, with its position; None when there is
    /// none yet (or the next one is still being written).
    pub fn next(&mut self) -> Option<(u64, &[u8])> {
        loop {
            if self.read == self.producer_pos() {
                return None;
            }
            let header = self.header();
            if header & BUSY != 0 {
                return None;
            }
            let len = u64::from(header & !(BUSY | DISCARD));
            let pos = self.read;
            if len > self.mask + 1 {
                // Not a length the kernel could have written: read nothing more rather
                // than outside the mapping.
                tracing::error!("ring buffer record at {pos} claims {len} bytes: not read");
                return None;
            }
            self.read += (HEADER + len).next_multiple_of(8);
            if header & DISCARD != 0 {
                continue;
            }
            let at = self.page + (pos & self.mask) as usize;
            // SAFETY: header + len lies within the two copies of the data pages (len is at
            // most their size); the kernel does not reuse it before it is released.
            let data = unsafe {
                std::slice::from_raw_parts(
                    (self.producer.ptr as *const u8).add(at + HEADER as usize),
                    len as usize,
                )
            };
            return Some((pos, data));
        }
    }

    /// A committed record waits at the cursor. After [`Ring::release`], a record the kernel
    /// committed while the consumer position stood behind it woke nobody: look with this.
    pub fn has_next(&self) -> bool {
        self.read != self.producer_pos() && self.header() & BUSY == 0
    }

    /// The header word of the record at the cursor (call only while it is behind the
    /// producer).
    fn header(&self) -> u32 {
        let at = self.page + (self.read & self.mask) as usize;
        // SAFETY: `at` is inside the first copy of the data pages; the header is 8-byte
        // aligned there (records are padded to 8).
        unsafe { &*((self.producer.ptr as *const u8).add(at) as *const AtomicU32) }
            .load(Ordering::Acquire)
    }

    /// Where the next record will be read.
    pub fn cursor(&self) -> u64 {
        self.read
    }

    /// Gives the kernel back everything before `pos` (at most the cursor; never backwards).
    pub fn release(&mut self, pos: u64) {
        let pos = pos.min(self.read);
        if pos <= self.released {
            return;
        }
        self.released = pos;
        self.consumer_pos().store(pos, Ordering::Release);
        // Pairs with the kernel's check of the consumer position when it commits: either it
        // sees this one, or this reader's next look sees its record.
        fence(Ordering::SeqCst);
    }

    /// Records read but not released: the kernel will not wake the reader for new ones.
    pub fn holding(&self) -> bool {
        self.released != self.read
    }

    /// The ring's size in bytes.
    pub fn size(&self) -> u64 {
        self.mask + 1
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
