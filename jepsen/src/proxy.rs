//! The fault proxy: one TCP forwarder per directed link between two processes, so the harness can
//! cut or slow that link alone, without root. A cut link forwards nothing (connections stay open
//! and data waits, as when packets are dropped and later retransmitted); a slowed link delivers
//! every chunk `delay` after it was read, keeping its order and throughput.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What one link does now.
#[derive(Debug, Default)]
struct LinkState {
    cut: AtomicBool,
    delay_ms: AtomicU64,
}

/// A forwarder from a local port to `target`.
#[derive(Debug, Clone)]
pub struct LinkProxy {
    /// Where the source process connects instead of `target`.
    pub address: String,
    pub target: String,
    state: Arc<LinkState>,
    /// Tells waiting forwarders that the link was restored.
    restored: watch::Sender<u64>,
}

const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight per direction while delayed.
const IN_FLIGHT_CHUNKS: usize = 256;

impl LinkProxy {
    /// Listens on an OS-chosen loopback port and forwards to `target` until `stop`.
    pub async fn start(target: &str, stop: CancellationToken) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (restored, _) = watch::channel(0);
        let proxy = LinkProxy {
            address,
            target: target.to_owned(),
            state: Arc::default(),
            restored,
        };
        let accepting = proxy.clone();
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(_) => continue,
                    },
                };
                let link = accepting.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    // The target may be down (a killed process): then the source sees its
                    // connection close, as it would connecting directly.
                    let Ok(outbound) = TcpStream::connect(&link.target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (inbound_read, inbound_write) = inbound.into_split();
                    let (outbound_read, outbound_write) = outbound.into_split();
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = link.forward(inbound_read, outbound_write) => {}
                        _ = link.forward(outbound_read, inbound_write) => {}
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Cuts the link (`true`) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.state.cut.store(cut, Ordering::SeqCst);
        if !cut {
            self.restored.send_modify(|generation| *generation += 1);
        }
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }

    /// Delays every chunk by `delay` (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Copies one direction until either side closes.
    async fn forward(&self, mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
        let (chunks, mut pending) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
        let reader = async move {
            let mut buffer = vec![0u8; CHUNK_BYTES];
            loop {
                let read = match from.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                let due = Instant::now() + Duration::from_millis(self.state.delay_ms.load(Ordering::SeqCst));
                if chunks.send((due, buffer[..read].to_vec())).await.is_err() {
                    return;
                }
            }
        };
        let mut restored = self.restored.subscribe();
        let writer = async move {
            while let Some((due, chunk)) = pending.recv().await {
                tokio::time::sleep_until(due).await;
                while self.is_cut() {
                    if restored.changed().await.is_err() {
                        return;
                    }
                }
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        };
        tokio::join!(reader, writer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> std::io::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(read) = socket.read(&mut buffer).await {
                        if read == 0 || socket.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(address)
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut answer = vec![0u8; message.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn forwards_holds_while_cut_and_delivers_after_restore() -> std::io::Result<()> {
        let stop = CancellationToken::new();
        let proxy = LinkProxy::start(&echo_server().await?, stop.clone()).await?;
        let mut stream = TcpStream::connect(&proxy.address).await?;
        assert_eq!(round_trip(&mut stream, b"hello").await?, b"hello");

        proxy.set_cut(true);
        stream.write_all(b"during").await?;
        let mut answer = [0u8; 6];
        let waited = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut answer)).await;
        assert!(waited.is_err(), "nothing may cross a cut link");

        proxy.set_cut(false);
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer)).await??;
        assert_eq!(&answer, b"during", "held data arrives once the link is restored");
        stop.cancel();
        Ok(())
    }

    #[tokio::test]
    async fn a_delayed_link_adds_its_delay_each_way() -> std::io::Result<()> {
        let stop = CancellationToken::new();
        let proxy = LinkProxy::start(&echo_server().await?, stop.clone()).await?;
        let mut stream = TcpStream::connect(&proxy.address).await?;
        proxy.set_delay(Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await?, b"slow");
        // The delay applies to each direction: at least 200 ms for the round trip.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        proxy.set_delay(Duration::ZERO);
        stop.cancel();
        Ok(())
    }
}
