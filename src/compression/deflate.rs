//! One message compressed into a complete permessage-deflate frame, once per broadcast.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};

use super::negotiate::Window;
use super::CompressionConfig;
use crate::frame::{payload_of, place_header, OpCode, MAX_HEADER_LEN};

/// The RSV1 bit of a frame's first byte: "this message is compressed" (RFC 7692 §6).
pub(crate) const RSV1: u8 = 0x40;

/// The empty stored block a sync flush ends with, which RFC 7692 §7.2.1 strips from every
/// compressed message (and the receiver appends again before inflating).
pub(crate) const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What compression did over the hub's lifetime ([`crate::Hub::compression`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeflateStats {
    /// Messages considered for compression: each broadcast that had subscribers with
    /// permessage-deflate, once whatever their number, and each status snapshot's frames
    /// the first time a subscriber with it needs them (once per snapshot; per subscriber
    /// for the Skreaver and Socket.IO dialects, which transcode it).
    pub messages: u64,
    /// Those sent compressed; the others were under the threshold or did not get smaller.
    pub compressed: u64,
    /// The messages' payload bytes before compression.
    pub bytes_in: u64,
    /// Their payload bytes as sent (compressed or not): `1 - bytes_out / bytes_in` is the
    /// share of bytes compression saved.
    pub bytes_out: u64,
}

/// Compresses broadcast frames (see the [module docs](super)) and counts what it did.
#[derive(Debug)]
pub(crate) struct Deflater {
    threshold: usize,
    level: u32,
    messages: AtomicU64,
    compressed: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Deflater {
    /// A deflater with `config`'s threshold and level.
    pub(crate) fn new(config: &CompressionConfig) -> Self {
        Self {
            threshold: config.threshold,
            level: config.level.clamp(1, 9),
            messages: AtomicU64::new(0),
            compressed: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// The frame to send a client with permessage-deflate in place of `frame`, a complete
    /// unfragmented text frame as [`crate::frame`] builds them: the same message
    /// compressed, with RSV1 set; or `frame` itself when its payload is under the threshold
    /// or does not get smaller. Any other frame is returned as it is. Compressed with
    /// `window`: a client that inflates with a window that large or larger reads it.
    pub(crate) fn frame(&self, frame: &Bytes, window: Window) -> Bytes {
        if frame.first() != Some(&(0x80 | OpCode::Text as u8)) {
            return frame.clone();
        }
        let payload = payload_of(frame);
        let compressed = match payload.len() < self.threshold {
            true => None,
            false => compress_frame(&payload, self.level, window),
        };
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes_in
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let (out, sent) = match compressed {
            Some((out, payload_len)) => {
                self.compressed.fetch_add(1, Ordering::Relaxed);
                (out, payload_len)
            }
            None => (frame.clone(), payload.len()),
        };
        self.bytes_out.fetch_add(sent as u64, Ordering::Relaxed);
        out
    }

    /// The counts so far.
    pub(crate) fn stats(&self) -> DeflateStats {
        DeflateStats {
            messages: self.messages.load(Ordering::Relaxed),
            compressed: self.compressed.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// `payload` compressed (raw deflate, sync-flushed, the tail stripped: RFC 7692 §7.2.1).
/// `None` if that is not shorter than `payload`.
pub fn compress(payload: &[u8], level: u32) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() + SYNC_TAIL.len());
    deflate_into(payload, level, Window::Bits15, &mut out)?;
    Some(out)
}

/// A complete compressed text frame (RSV1 set) carrying `payload`, and its payload's
/// length; `None` if compressing does not make the payload shorter.
fn compress_frame(payload: &[u8], level: u32, window: Window) -> Option<(Bytes, usize)> {
    // One allocation: room for the largest header, then the compressed payload. It may be
    // no longer than the payload plus the tail that is stripped off.
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len() + SYNC_TAIL.len());
    out.resize(MAX_HEADER_LEN, 0);
    deflate_into(payload, level, window, &mut out)?;
    let len = out.len() - MAX_HEADER_LEN;
    let start = place_header(&mut out, OpCode::Text, RSV1);
    Some((Bytes::from(out).slice(start..), len))
}

/// Appends `payload` compressed with `window` to `out`, within `out`'s capacity: `None`
/// (and `out` in an unspecified state) if the compressed form, tail stripped, would not be
/// shorter than `payload`.
fn deflate_into(payload: &[u8], level: u32, window: Window, out: &mut Vec<u8>) -> Option<()> {
    thread_local! {
        /// This thread's compressor for each window, with its level: zlib-rs's state is
        /// about 300 KB, allocated once per thread and window used, not per message.
        static COMPRESS: [RefCell<Option<(u32, Compress)>>; Window::ALL.len()] =
            const { [const { RefCell::new(None) }; Window::ALL.len()] };
    }
    let start = out.len();
    let limit = start + payload.len() + SYNC_TAIL.len();
    COMPRESS.with(|cells| {
        let mut cell = cells[window.index()].borrow_mut();
        let compress = match &mut *cell {
            Some((at, compress)) if *at == level => {
                compress.reset();
                compress
            }
            slot => {
                let compress =
                    Compress::new_with_window_bits(Compression::new(level), false, window.bits());
                &mut slot.insert((level, compress)).1
            }
        };
        out.reserve_exact(limit.saturating_sub(out.len()));
        loop {
            let (consumed, written) = (compress.total_in(), out.len());
            let rest = &payload[consumed as usize..];
            compress.compress_vec(rest, out, FlushCompress::Sync).ok()?;
            // A sync flush is complete when it leaves output room unused (zlib's rule).
            if compress.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            // Full: a longer result is useless. No progress: nothing more will come.
            let stuck = compress.total_in() == consumed && out.len() == written;
            if out.len() >= limit || stuck {
                return None;
            }
        }
        Some(())
    })?;
    if !out.ends_with(&SYNC_TAIL)
        || (out.len() - start).saturating_sub(SYNC_TAIL.len()) >= payload.len()
    {
        return None;
    }
    out.truncate(out.len() - SYNC_TAIL.len());
    Some(())
}
