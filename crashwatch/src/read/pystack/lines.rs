//! A code object's line table, per CPython version: the line of the instruction a frame is at.
//! 3.9's `co_lnotab` (byte offsets), 3.10's `co_linetable` (ranges in bytes), 3.11+'s
//! location table (PEP 657, Objects/locations.md: variable-length entries in code units).
//! Each walks a table of at most the bytes given and never fails: no line is None.

/// 3.9: `(address increment, signed line increment)` pairs; `lasti` in bytes.
pub fn lnotab(table: &[u8], first: i64, lasti: u64) -> Option<u32> {
    let (mut line, mut addr) = (first, 0u64);
    for p in table.chunks_exact(2) {
        addr += u64::from(p[0]);
        if addr > lasti {
            break;
        }
        line += i64::from(p[1] as i8);
    }
    u32::try_from(line).ok()
}

/// 3.10: `(range length, signed line delta)` pairs, -128 for a range with no line; `lasti` in
/// bytes.
pub fn linetable(table: &[u8], first: i64, lasti: u64) -> Option<u32> {
    let (mut line, mut addr) = (first, 0u64);
    for p in table.chunks_exact(2) {
        let delta = p[1] as i8;
        if delta != -128 {
            line += i64::from(delta);
        }
        let end = addr + u64::from(p[0]);
        if addr <= lasti && lasti < end {
            return (delta != -128).then(|| u32::try_from(line).ok()).flatten();
        }
        addr = end;
    }
    None
}

/// 3.11+: the location table; `index` in code units (2 bytes each).
pub fn locations(table: &[u8], first: i64, index: u64) -> Option<u32> {
    let mut it = table.iter().copied();
    let (mut line, mut at) = (first, 0u64);
    while let Some(b) = it.next() {
        if b & 0x80 == 0 {
            return None;
        }
        let code = (b >> 3) & 15;
        let len = u64::from(b & 7) + 1;
        let here = match code {
            15 => None,
            14 => {
                line += svarint(&mut it)?;
                varint(&mut it)?;
                varint(&mut it)?;
                varint(&mut it)?;
                Some(line)
            }
            13 => {
                line += svarint(&mut it)?;
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                it.next()?;
                it.next()?;
                Some(line)
            }
            _ => {
                it.next()?;
                Some(line)
            }
        };
        if at <= index && index < at + len {
            return here.and_then(|l| u32::try_from(l).ok());
        }
        at += len;
    }
    None
}

fn varint(it: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let mut b = it.next()?;
    let mut v = i64::from(b & 63);
    let mut shift = 6;
    while b & 64 != 0 && shift < 60 {
        b = it.next()?;
        v |= i64::from(b & 63) << shift;
        shift += 6;
    }
    Some(v)
}

fn svarint(it: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let u = varint(it)?;
    Some(if u & 1 != 0 { -(u >> 1) } else { u >> 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_versions_table_gives_the_line() {
        // 3.9: bytes 0..6 on line 10, 6..10 on 11, then +2 lines at byte 10.
        let t = [6, 1, 4, 2];
        assert_eq!(lnotab(&t, 10, 0), Some(10));
        assert_eq!(lnotab(&t, 10, 7), Some(11));
        assert_eq!(lnotab(&t, 10, 12), Some(13));
        // 3.10: 4 bytes on line 11, 2 bytes with no line, 6 bytes on 13.
        let t = [4, 1, 2, 0x80, 6, 2];
        assert_eq!(linetable(&t, 10, 2), Some(11));
        assert_eq!(linetable(&t, 10, 4), None);
        assert_eq!(linetable(&t, 10, 8), Some(13));
        assert_eq!(linetable(&t, 10, 40), None);
        // 3.11: a no-column entry (+2 lines, 2 units), a one-line entry (+1, 3 units), a
        // long entry (-1 line, 1 unit), no location (1 unit).
        let t = [
            0x80 | 13 << 3 | 1,
            4,
            0x80 | 11 << 3 | 2,
            0,
            5,
            0x80 | 14 << 3,
            3,
            0,
            1,
            2,
            0x80 | 15 << 3,
        ];
        assert_eq!(locations(&t, 10, 1), Some(12));
        assert_eq!(locations(&t, 10, 4), Some(13));
        assert_eq!(locations(&t, 10, 5), Some(12));
        assert_eq!(locations(&t, 10, 6), None);
        assert_eq!(locations(&t, 10, 7), None);
        // Cut tables give no line, not a wrong one.
        assert_eq!(locations(&t[..1], 10, 0), None);
    }
}
