//! Socket options of an accepted connection.
//!
//! Every client socket gets `TCP_NODELAY` (a frame is written when it is ready; the writer
//! already batches what is queued into one `writev`), and, on Linux, `TCP_NOTSENT_LOWAT`
//! set to `socket_unsent_limit`. The kernel's send buffer grows to megabytes for a peer that
//! stops reading; with the limit, what the kernel holds unsent for a client stays small, so
//! a client that falls behind fills its own queue, where the `slow_consumer` policy acts,
//! and a slow reader's writes keep going through, which the keep-alive counts as alive.
//! Bytes sent and not yet acknowledged are not limited: a reading client over a long link
//! keeps its full window.

use tokio::net::TcpStream;

/// Sets the options every client socket gets. Failures are logged, never fatal: the
/// connection works without them.
pub(crate) fn tune(tcp: &TcpStream, unsent_limit: u32) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    if unsent_limit != 0 {
        limit_unsent(tcp, unsent_limit);
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn limit_unsent(tcp: &TcpStream, limit: u32) {
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(limit) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn limit_unsent(_tcp: &TcpStream, _limit: u32) {}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limit_is_set_on_the_socket_and_zero_leaves_the_kernel_default() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _a = TcpStream::connect(addr).await.unwrap();
        let (tuned, _) = listener.accept().await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let (untouched, _) = listener.accept().await.unwrap();
        let default = socket2::SockRef::from(&untouched)
            .tcp_notsent_lowat()
            .unwrap();

        tune(&tuned, 64 * 1024);
        tune(&untouched, 0);

        assert_eq!(
            socket2::SockRef::from(&tuned).tcp_notsent_lowat().unwrap(),
            64 * 1024
        );
        assert!(tuned.nodelay().unwrap());
        assert_eq!(
            socket2::SockRef::from(&untouched)
                .tcp_notsent_lowat()
                .unwrap(),
            default
        );
        assert_ne!(default, 64 * 1024);
    }
}
