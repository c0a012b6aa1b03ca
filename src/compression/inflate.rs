//! A client's compressed message, inflated under the message size limit.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};

use super::deflate::SYNC_TAIL;
use crate::protocol::close::CloseCode;

/// Why a compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InflateError {
    /// It inflates past the message size limit (a deflate bomb, or just too big): 1009.
    #[error("the message inflates past the size limit")]
    TooBig,
    /// It is not a valid deflate stream: 1007.
    #[error("the message is not valid deflate data")]
    Corrupt,
}

impl InflateError {
    /// The close code the connection ends with.
    pub(crate) fn close_code(self) -> CloseCode {
        match self {
            Self::TooBig => CloseCode::MESSAGE_TOO_BIG,
            Self::Corrupt => CloseCode::INVALID_PAYLOAD,
        }
    }
}

/// Inflates one compressed message (RFC 7692 §7.2.2: the stripped tail appended again),
/// producing at most `limit` bytes: past that it stops at once with
/// [`InflateError::TooBig`], so a small message that inflates to gigabytes costs no more
/// than `limit` bytes of memory and the time to produce them.
///
/// Each message is inflated on its own (the server asks for `client_no_context_takeover`);
/// the inflater's state is reused per thread.
pub(crate) fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    thread_local! {
        static DECOMPRESS: RefCell<Decompress> = RefCell::new(Decompress::new(false));
    }
    DECOMPRESS.with(|cell| {
        let mut decompress = cell.borrow_mut();
        decompress.reset(false);
        // Room for one byte past the limit, to see it passed.
        let most = limit.saturating_add(1);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).max(64).min(most));
        for input in [compressed, &SYNC_TAIL] {
            let start = decompress.total_in();
            loop {
                let consumed = (decompress.total_in() - start) as usize;
                let before = (consumed, out.len());
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooBig);
                    }
                    let grow = out.len().max(64).min(most - out.len());
                    out.reserve_exact(grow);
                }
                let status = decompress
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                let consumed = (decompress.total_in() - start) as usize;
                match status {
                    // A final block ends the message (RFC 7692 §7.2.3.4); the rest is
                    // ignored.
                    Status::StreamEnd => return Ok(out),
                    _ if consumed == input.len() && out.len() < out.capacity() => break,
                    _ if (consumed, out.len()) == before => return Err(InflateError::Corrupt),
                    _ => {}
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::super::compress;
    use super::*;

    #[test]
    fn what_is_compressed_inflates_back() {
        let message =
            br#"{"type":"agent.status","data":{"agent_id":"agent-7","status":"busy"}}"#.repeat(5);
        let compressed = compress(&message, 6).unwrap();
        assert!(compressed.len() < message.len() / 3, "{}", compressed.len());
        assert_eq!(inflate(&compressed, 4096).unwrap(), message);
        assert_eq!(inflate(&compressed, message.len()).unwrap(), message);
        assert_eq!(
            inflate(&compressed, message.len() - 1),
            Err(InflateError::TooBig)
        );
    }

    #[test]
    fn any_limit_works_down_to_zero() {
        // Found by the `inflate` fuzz target: a limit under 63 bytes panicked (`clamp`).
        let text = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabc";
        let compressed = compress(text, 6).unwrap();
        assert_eq!(inflate(&compressed, text.len()).unwrap(), text);
        assert_eq!(inflate(&compressed, 3), Err(InflateError::TooBig));
        assert_eq!(inflate(&compressed, 0), Err(InflateError::TooBig));
        assert_eq!(inflate(&compressed, usize::MAX).unwrap(), text);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = compress(&vec![b'a'; 50_000_000], 9).unwrap();
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 65_536), Err(InflateError::TooBig));
    }

    #[test]
    fn garbage_is_corrupt_and_the_next_message_still_inflates() {
        assert_eq!(inflate(&[0xff; 40], 1024), Err(InflateError::Corrupt));
        let ok = compress(&[b'x'; 300], 1).unwrap();
        assert_eq!(inflate(&ok, 1024).unwrap(), vec![b'x'; 300]);
    }

    #[test]
    fn a_final_block_ends_the_message() {
        // Python's zlib.compressobj(wbits=-15).compress(b"hello") + flush(): BFINAL set.
        let finished = [0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&finished, 1024).unwrap(), b"hello");
    }

    #[test]
    fn incompressible_payloads_are_not_compressed() {
        // xorshift64: bytes with no repetition deflate can use.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        assert_eq!(compress(&noise, 6), None);
        assert_eq!(compress(b"", 6), None);
    }
}
