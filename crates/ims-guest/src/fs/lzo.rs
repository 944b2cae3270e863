//! LZO1X decompression (the format of Btrfs' `compress=lzo` extents), bounded and checked:
//! every input read, output write and back-reference is tested against its buffer, so hostile
//! bytes end in an error, never a panic or an unbounded allocation.

/// Why a stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LzoError {
    #[error("LZO input ends early")]
    InputOverrun,
    #[error("LZO output would exceed {0} bytes")]
    OutputOverrun(usize),
    #[error("LZO back-reference before the start of the output")]
    LookBehind,
    #[error("LZO stream has no end marker")]
    NoEnd,
}

struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, LzoError> {
        let b = *self.data.get(self.at).ok_or(LzoError::InputOverrun)?;
        self.at += 1;
        Ok(b)
    }

    fn le16(&mut self) -> Result<usize, LzoError> {
        let lo = usize::from(self.byte()?);
        let hi = usize::from(self.byte()?);
        Ok(lo | (hi << 8))
    }

    /// A run length continued by zero bytes (each adds 255) and a final non-zero byte.
    fn long_length(&mut self, base: usize) -> Result<usize, LzoError> {
        let mut zeros = 0usize;
        while self.data.get(self.at) == Some(&0) {
            zeros += 1;
            self.at += 1;
        }
        let last = usize::from(self.byte()?);
        zeros
            .checked_mul(255)
            .and_then(|z| z.checked_add(base))
            .and_then(|n| n.checked_add(last))
            .ok_or(LzoError::InputOverrun)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], LzoError> {
        let end = self.at.checked_add(n).ok_or(LzoError::InputOverrun)?;
        let bytes = self.data.get(self.at..end).ok_or(LzoError::InputOverrun)?;
        self.at = end;
        Ok(bytes)
    }
}

fn literals(input: &mut Input, out: &mut Vec<u8>, n: usize, max: usize) -> Result<(), LzoError> {
    if out.len().checked_add(n).is_none_or(|end| end > max) {
        return Err(LzoError::OutputOverrun(max));
    }
    out.extend_from_slice(input.take(n)?);
    Ok(())
}

/// Copies `len` bytes starting `distance` bytes back (overlapping copies repeat, as LZ77 does).
fn back_copy(out: &mut Vec<u8>, distance: usize, len: usize, max: usize) -> Result<(), LzoError> {
    let start = out
        .len()
        .checked_sub(distance)
        .ok_or(LzoError::LookBehind)?;
    if distance == 0 {
        return Err(LzoError::LookBehind);
    }
    if out.len().checked_add(len).is_none_or(|end| end > max) {
        return Err(LzoError::OutputOverrun(max));
    }
    for i in 0..len {
        let b = out[start + i];
        out.push(b);
    }
    Ok(())
}

/// Decodes one LZO1X stream (as `lzo1x_decompress_safe`) into at most `max` bytes.
pub fn decompress(data: &[u8], max: usize) -> Result<Vec<u8>, LzoError> {
    let mut input = Input { data, at: 0 };
    let mut out = Vec::with_capacity(max.min(1 << 16));
    // `state`: literals copied after the last instruction (0–3), or 4 after a literal run.
    let mut state;
    let first = *data.first().ok_or(LzoError::InputOverrun)?;
    if first > 17 {
        input.at = 1;
        let t = usize::from(first - 17);
        literals(&mut input, &mut out, t, max)?;
        state = if t < 4 { t } else { 4 };
    } else {
        state = 0;
    }
    loop {
        let t = usize::from(input.byte()?);
        let (distance, len, next);
        if t < 16 {
            if state == 0 {
                // A literal run of 4 or more bytes.
                let n = if t == 0 { input.long_length(15)? } else { t };
                literals(&mut input, &mut out, n + 3, max)?;
                state = 4;
                continue;
            }
            let h = usize::from(input.byte()?);
            next = t & 3;
            if state != 4 {
                // Two bytes from at most 1 KiB back.
                distance = 1 + (t >> 2) + (h << 2);
                len = 2;
            } else {
                // Three bytes from 2–3 KiB back.
                distance = 1 + 0x800 + (t >> 2) + (h << 2);
                len = 3;
            }
        } else if t >= 64 {
            let h = usize::from(input.byte()?);
            next = t & 3;
            distance = 1 + ((t >> 2) & 7) + (h << 3);
            len = (t >> 5) + 1;
        } else if t >= 32 {
            let n = t & 31;
            len = if n == 0 {
                input.long_length(31)? + 2
            } else {
                n + 2
            };
            let d = input.le16()?;
            distance = 1 + (d >> 2);
            next = d & 3;
        } else {
            // 16..31: far matches, and the end marker.
            let n = t & 7;
            len = if n == 0 {
                input.long_length(7)? + 2
            } else {
                n + 2
            };
            let d = input.le16()?;
            let far = ((t & 8) << 11) + (d >> 2);
            if far == 0 {
                // End of stream: 0x11 0x00 0x00.
                return if len == 3 {
                    Ok(out)
                } else {
                    Err(LzoError::NoEnd)
                };
            }
            distance = far + 0x4000;
            next = d & 3;
        }
        back_copy(&mut out, distance, len, max)?;
        literals(&mut input, &mut out, next, max)?;
        state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_only_stream() {
        // 22..255 as first byte: literal run of (byte - 17), then the end marker.
        let mut s = vec![17 + 5];
        s.extend_from_slice(b"hello");
        s.extend_from_slice(&[0x11, 0, 0]);
        assert_eq!(decompress(&s, 100).unwrap(), b"hello");
    }

    #[test]
    fn hostile_streams_are_errors() {
        // A back-reference before the output's start.
        assert_eq!(
            decompress(
                &[17 + 4, b'a', b'b', b'c', b'd', 0x40 | (7 << 2), 0xff],
                100
            ),
            Err(LzoError::LookBehind)
        );
        assert_eq!(decompress(&[], 10), Err(LzoError::InputOverrun));
        assert_eq!(decompress(&[17 + 5, b'a'], 10), Err(LzoError::InputOverrun));
        let mut s = vec![17 + 5];
        s.extend_from_slice(b"hello");
        s.extend_from_slice(&[0x11, 0, 0]);
        assert_eq!(decompress(&s, 3), Err(LzoError::OutputOverrun(3)));
        // Long runs of zero length bytes end at the input's end, not in a loop.
        assert_eq!(decompress(&[0; 4096], 1 << 20), Err(LzoError::InputOverrun));
    }
}
