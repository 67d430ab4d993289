//! The address every broker of a tansu cluster advertises: a TCP forwarder
//! that sends each connection to one live broker, the same one until it
//! stops accepting, then the next one that does.
//!
//! Why not let each broker advertise itself: they all report themselves as
//! node 111, so a client knows one broker whose address is whichever
//! answered last, and recovers from its death only by re-bootstrapping,
//! which librdkafka 2.12 can skip for good. And brokers serving one consumer
//! group in turn act on stale copies of its state. With every client on one
//! broker at a time, neither happens (docs/adr/0018-kafka-cluster-locally.md).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

/// How long the front tries one broker before the next.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Front {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Front {
    /// Forwards connections to `listener` to `brokers`, preferring the first.
    pub fn start(listener: TcpListener, brokers: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let addr = listener
            .local_addr()
            .context("reading the front's address")?;
        listener
            .set_nonblocking(true)
            .context("making the front's listener non-blocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let brokers = Arc::new(brokers);
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tansu-front".into())
                .spawn(move || accept_loop(&listener, &brokers, &active, &stop))
                .context("starting the front's thread")?
        };
        Ok(Self {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    brokers: &Arc<Vec<SocketAddr>>,
    active: &Arc<AtomicUsize>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let brokers = brokers.clone();
                let active = active.clone();
                let _ = std::thread::Builder::new()
                    .name("tansu-front-conn".into())
                    .spawn(move || forward(client, &brokers, &active));
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => {
                tracing::warn!(%err, "the tansu front cannot accept a connection");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Connects `client` to the active broker, or the next live one, and copies
/// bytes both ways until either side closes. The client reconnects through
/// the front when its broker dies, and so reaches the next one.
fn forward(client: TcpStream, brokers: &[SocketAddr], active: &AtomicUsize) {
    let first = active.load(Ordering::SeqCst);
    let upstream = (0..brokers.len())
        .map(|k| (first + k) % brokers.len())
        .find_map(|i| {
            TcpStream::connect_timeout(&brokers[i], CONNECT_TIMEOUT)
                .ok()
                .map(|stream| (i, stream))
        });
    let Some((index, upstream)) = upstream else {
        return; // No broker is up: the client sees the connection close.
    };
    if index != first {
        let _ = active.compare_exchange(first, index, Ordering::SeqCst, Ordering::SeqCst);
    }
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(client_reader), Ok(upstream_reader)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let to_broker = std::thread::Builder::new()
        .name("tansu-front-copy".into())
        .spawn(move || copy(client_reader, upstream));
    copy(upstream_reader, client);
    if let Ok(to_broker) = to_broker {
        let _ = to_broker.join();
    }
}

/// Copies until end of stream or an error, then closes both sockets so the
/// other direction ends too.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each connection with its name, then closes;
    /// dropping it closes its port.
    struct NamedServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl NamedServer {
        fn start(name: &'static str) -> Self {
            Self::start_on("127.0.0.1:0", name)
        }

        fn start_on(addr: impl std::net::ToSocketAddrs, name: &'static str) -> Self {
            let listener = TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let stopped = stop.clone();
            let thread = std::thread::spawn(move || {
                while !stopped.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.write_all(name.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
            Self {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for NamedServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn ask(front: SocketAddr) -> String {
        let mut stream = TcpStream::connect(front).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn stays_on_the_live_broker_and_moves_on_only_when_it_is_gone() {
        let first = NamedServer::start("first");
        let second = NamedServer::start("second");
        // Bound, then closed: nothing listens there.
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let front = Front::start(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            vec![dead_addr, first.addr, second.addr],
        )
        .unwrap();

        assert_eq!(ask(front.addr()), "first");
        assert_eq!(ask(front.addr()), "first");
        let first_addr = first.addr;
        drop(first);
        assert_eq!(ask(front.addr()), "second");
        // A broker that comes back does not take the traffic back.
        let first_again = NamedServer::start_on(first_addr, "first again");
        assert_eq!(ask(front.addr()), "second");
        // Round the list, past the dead address.
        drop(second);
        assert_eq!(ask(front.addr()), "first again");
        drop(first_again);
        assert_eq!(ask(front.addr()), "", "no broker: the connection closes");
    }
}
