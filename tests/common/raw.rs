//! WebSocket by hand over a raw TCP socket: what a well-behaved client library cannot send
//! (unmasked frames, bad fragments, floods), and clients that never read.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a WebSocket by hand and returns the socket just after the 101 response.
pub async fn raw_ws_at(addr: SocketAddr, path: &str) -> TcpStream {
    raw_ws_with(addr, path, "").await.0
}

/// Opens a WebSocket by hand with `headers` (each line ending in `\r\n`) added to the
/// request; returns the socket just after the 101 response, and the response's head.
pub async fn raw_ws_with(addr: SocketAddr, path: &str, headers: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        super::within(tcp.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (tcp, head)
}

/// Reads one server frame: its first byte (FIN, RSV1, opcode) and its payload.
pub async fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 2];
    super::within(tcp.read_exact(&mut header)).await.unwrap();
    assert_eq!(header[1] & 0x80, 0, "a server frame is never masked");
    let len = match header[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            tcp.read_exact(&mut n).await.unwrap();
            u16::from_be_bytes(n) as usize
        }
        127 => {
            let mut n = [0u8; 8];
            tcp.read_exact(&mut n).await.unwrap();
            u64::from_be_bytes(n) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    super::within(tcp.read_exact(&mut payload)).await.unwrap();
    (header[0], payload)
}

/// A client frame with the given first byte, masked or not.
pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n < 65536 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [7, 1, 9, 3];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until a close frame (returning its code) or the end of the stream.
pub async fn close_code(tcp: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(super::DEADLINE, read_all).await;
    // Walk the server's (unmasked) frames.
    let mut at = 0;
    while at + 2 <= buf.len() {
        let opcode = buf[at] & 0x0f;
        let (len, header) = match buf[at + 1] & 0x7f {
            126 => (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(buf[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = &buf[at + header..(at + header + len).min(buf.len())];
        if opcode == 0x8 {
            return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
        at += header + len;
    }
    None
}

/// Opens a WebSocket by hand to `/ws` of `server`; see [`raw_ws_at`].
pub async fn raw_ws(server: &super::TestServer) -> TcpStream {
    raw_ws_at(server.addr, "/ws").await
}
