//! Header edit lists recorded by plugins and applied by `write` when a head is serialised:
//! one reusable byte arena per request, no allocation once warm. Knows nothing of plugins.

/// How an edit treats existing headers of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditOp {
    /// Drop every existing header of this name, then write this one.
    Set,
    /// Write this one in addition to the existing ones.
    Add,
    /// Drop every existing header of this name.
    Remove,
}

/// A byte range into the arena.
type Range = (u32, u32);

/// Header edits copied into one reusable byte arena, so recording an edit allocates nothing
/// once warm and shares no reference count with other shards.
///
/// A written edit is stored as its finished wire line, `name: value\r\n`, so a writer copies
/// each (usually all of them at once, `write_to`) instead of four pieces per header: callgrind
/// put the old piecewise copies at ~25% of key-auth + limit-count's overhead.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    arena: Vec<u8>,
    /// (op, name, value); a written op's line runs from `name.0` to `value.1 + 2`.
    ops: Vec<(EditOp, Range, Range)>,
    /// Filter over the names of all ops (`name_bit`): `set`/`remove` skip the scan for an earlier
    /// edit of the same name when its bit is clear. A superset after `retain` is harmless.
    names: u64,
    /// Same over set/remove ops only: the writers call `drops` for every header of the message,
    /// and almost all of them are answered by this bit (callgrind: the scan was ~25 Ir/header).
    dropped: u64,
    /// The arena is exactly the written ops' lines in order (no remove, nothing forgotten),
    /// so `write_to` copies it in one piece.
    packed: bool,
}

/// One of 64 bits from a header name's length and lowercased last two bytes (X-RateLimit-Limit
/// and X-RateLimit-Reset differ only there). Cheap: it runs for every header a writer copies.
#[inline]
fn name_bit(name: &[u8]) -> u64 {
    let (a, b) = match name {
        [.., b, a] => (*a, *b),
        [a] => (*a, 0),
        [] => (0, 0),
    };
    let h = name.len() as u32 ^ u32::from(a | 0x20) << 1 ^ u32::from(b | 0x20) << 3;
    1u64 << (h & 63)
}

impl HeaderEdits {
    pub fn clear(&mut self) {
        self.arena.clear();
        self.ops.clear();
        self.names = 0;
        self.dropped = 0;
        self.packed = true;
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Records `op` with its line `name: value\r\n` appended to the arena in one piece.
    #[inline]
    fn push(&mut self, op: EditOp, bit: u64, name: &[u8], value: &[u8]) {
        if self.arena.is_empty() {
            // A fresh (Default) list has not been through `clear`.
            self.packed = true;
        }
        self.names |= bit;
        if op != EditOp::Add {
            self.dropped |= bit;
        }
        let n0 = self.arena.len();
        let n1 = n0 + name.len();
        let v0 = n1 + 2;
        let v1 = v0 + value.len();
        let end = v1 + 2;
        if end > u32::MAX as usize {
            // Ranges are u32; a 4 GiB header list is not a thing to write.
            return;
        }
        self.arena.reserve(end - n0);
        // One capacity check instead of four `extend_from_slice` (callgrind: ~40 Ir per edit).
        // SAFETY: `reserve` made room for `end - n0` bytes after the current length; the four
        // copies below fill exactly [n0, end) before `set_len` exposes it. `name` and `value`
        // are shared borrows held while `self` is borrowed mutably, so neither lies in `arena`.
        unsafe {
            let p = self.arena.as_mut_ptr();
            std::ptr::copy_nonoverlapping(name.as_ptr(), p.add(n0), name.len());
            std::ptr::copy_nonoverlapping(b": ".as_ptr(), p.add(n1), 2);
            std::ptr::copy_nonoverlapping(value.as_ptr(), p.add(v0), value.len());
            std::ptr::copy_nonoverlapping(b"\r\n".as_ptr(), p.add(v1), 2);
            self.arena.set_len(end);
        }
        self.ops
            .push((op, (n0 as u32, n1 as u32), (v0 as u32, v1 as u32)));
    }

    /// Drops earlier edits of the name with this bit (a later set or remove replaces them).
    #[inline]
    fn forget(&mut self, bit: u64, name: &[u8]) {
        if self.names & bit != 0 {
            self.forget_named(name);
        }
    }

    #[inline(never)]
    fn forget_named(&mut self, name: &[u8]) {
        let before = self.ops.len();
        self.ops
            .retain(|(_, n, _)| !self.arena[n.0 as usize..n.1 as usize].eq_ignore_ascii_case(name));
        if self.ops.len() != before {
            self.packed = false;
        }
    }

    /// Inlined so a constant name's bit and copy are folded at the call site (limit-count's
    /// three X-RateLimit-* sets: callgrind ~90 Ir per set as a call, most of it for the name).
    #[inline]
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        let bit = name_bit(name);
        self.forget(bit, name);
        self.push(EditOp::Set, bit, name, value);
    }

    /// `set` with a decimal value (itoa: no division loop, no allocation).
    #[inline(always)]
    pub fn set_u64(&mut self, name: &[u8], value: u64) {
        let mut b = itoa::Buffer::new();
        self.set(name, b.format(value).as_bytes());
    }

    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.push(EditOp::Add, name_bit(name), name, value);
    }

    pub fn remove(&mut self, name: &[u8]) {
        let bit = name_bit(name);
        self.forget(bit, name);
        self.push(EditOp::Remove, bit, name, b"");
        self.packed = false;
    }

    /// True if an original header of this name must not be written.
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        if self.dropped & name_bit(name) == 0 {
            return false;
        }
        self.ops.iter().any(|(op, n, _)| {
            *op != EditOp::Add && self.arena[n.0 as usize..n.1 as usize].eq_ignore_ascii_case(name)
        })
    }

    /// The headers this list writes (sets and adds), in order.
    pub fn written(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ops
            .iter()
            .filter(|(op, _, _)| *op != EditOp::Remove)
            .map(|(_, n, v)| {
                (
                    &self.arena[n.0 as usize..n.1 as usize],
                    &self.arena[v.0 as usize..v.1 as usize],
                )
            })
    }

    /// Appends the written headers as wire lines (`written()`, serialised).
    #[inline]
    pub fn write_to(&self, out: &mut bytes::BytesMut) {
        use bytes::BufMut;
        if self.ops.is_empty() {
            return;
        }
        if self.packed {
            out.put_slice(&self.arena);
            return;
        }
        for (op, n, v) in &self.ops {
            if *op != EditOp::Remove {
                out.put_slice(&self.arena[n.0 as usize..v.1 as usize + 2]);
            }
        }
    }

    /// The value this list sets or adds for `name`, if any (last one wins).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.written()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .last()
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_remove_drops() {
        let mut e = HeaderEdits::default();
        e.add(b"X-A", b"1");
        e.set(b"x-a", b"2");
        e.set(b"X-B", b"3");
        e.remove(b"x-b");
        let w: Vec<_> = e.written().collect();
        assert_eq!(w, vec![(&b"x-a"[..], &b"2"[..])]);
        assert!(e.drops(b"X-A") && e.drops(b"X-B") && !e.drops(b"X-C"));
        assert_eq!(e.get(b"X-A"), Some(&b"2"[..]));
    }

    #[test]
    fn filter_never_hides_a_drop() {
        let names: [&[u8]; 6] = [
            b"X-RateLimit-Limit",
            b"server",
            b"a",
            b"",
            b"Set-Cookie",
            b"x-b",
        ];
        for n in names {
            let mut e = HeaderEdits::default();
            e.add(b"X-Other", b"1");
            assert!(!e.drops(n));
            e.set(n, b"v");
            let upper = n.to_ascii_uppercase();
            assert!(e.drops(n) && e.drops(&upper), "{n:?}");
            e.set(&upper, b"w");
            assert_eq!(
                e.written()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                    .count(),
                1
            );
        }
    }

    /// `write_to` writes exactly `written()` as wire lines, packed or not.
    #[test]
    fn write_to_matches_written() {
        type Step = fn(&mut HeaderEdits);
        let cases: [&[Step]; 5] = [
            &[],
            &[
                |e| e.set(b"X-A", b"1"),
                |e| e.add(b"X-B", b"2"),
                |e| e.set_u64(b"X-C", 1234567890),
            ],
            &[|e| e.set(b"X-A", b"1"), |e| e.set(b"x-a", b"2")],
            &[
                |e| e.add(b"X-A", b"1"),
                |e| e.remove(b"X-B"),
                |e| e.add(b"X-C", b""),
            ],
            &[
                |e| e.set(b"X-A", b"1"),
                |e| e.remove(b"X-A"),
                |e| e.set(b"X-A", b"3"),
            ],
        ];
        for steps in cases {
            let mut e = HeaderEdits::default();
            for round in 0..2 {
                for s in steps {
                    s(&mut e);
                }
                let mut want = Vec::new();
                for (n, v) in e.written() {
                    want.extend_from_slice(n);
                    want.extend_from_slice(b": ");
                    want.extend_from_slice(v);
                    want.extend_from_slice(b"\r\n");
                }
                let mut out = bytes::BytesMut::new();
                e.write_to(&mut out);
                assert_eq!(out[..], want[..], "round {round}");
                e.clear();
            }
        }
    }
}
