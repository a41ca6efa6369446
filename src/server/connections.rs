//! Open connections per client address, capped so that one address cannot hold every file
//! descriptor of the server. Counted when actix accepts a connection, released when the
//! connection's state drops; a connection over the cap is shut down before any byte of it
//! is read.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;

use super::Metrics;

/// The open connections of every address.
pub struct ConnectionCounter {
    per_address: usize,
    /// Trusted proxies carry many clients each: not capped.
    exempt: Vec<IpAddr>,
    open: Mutex<HashMap<IpAddr, usize>>,
    metrics: Metrics,
}

/// One admitted connection; dropping it (when the connection ends) releases its place.
pub struct Admitted {
    counter: Arc<ConnectionCounter>,
    ip: IpAddr,
    exempt: bool,
}

impl ConnectionCounter {
    /// At most `per_address` open connections per address, except from `exempt`.
    pub fn new(per_address: usize, exempt: Vec<IpAddr>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            per_address,
            exempt: exempt.iter().map(IpAddr::to_canonical).collect(),
            open: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// A place for one more connection from `ip`, or `None` when it holds its share. An
    /// IPv4 client of a dual-stack listener counts as its IPv4 address; an IPv6 client as
    /// its /64, the block one subscriber gets.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let ip = ip.to_canonical();
        let exempt = self.exempt.contains(&ip);
        let ip = match ip {
            IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
            v4 @ IpAddr::V4(_) => v4,
        };
        if !exempt {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let count = open.entry(ip).or_insert(0);
            if *count >= self.per_address {
                return None;
            }
            *count += 1;
        }
        Some(Admitted {
            counter: Arc::clone(self),
            ip,
            exempt,
        })
    }

    /// The `on_connect` hook: admits the connection or shuts it down at once.
    pub fn on_connect(self: &Arc<Self>, connection: &dyn Any, data: &mut Extensions) {
        let Some(stream) = tcp_stream(connection) else {
            // A transport this hook does not know: say so once rather than cap nothing
            // silently.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("connections of this listener are not counted per address");
            });
            return;
        };
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        match self.admit(peer.ip()) {
            Some(admitted) => {
                data.insert(admitted);
            }
            None => {
                self.metrics.connection_refused("per_address");
                // The dispatcher then reads end of stream and drops the connection.
                let _ = rustix::net::shutdown(stream, rustix::net::Shutdown::Both);
            }
        }
    }
}

/// The TCP connection under a plain or a TLS connection. Over TLS, actix calls the hook
/// once the handshake is done (its time bounded by actix's TLS handshake timeout).
fn tcp_stream(connection: &dyn Any) -> Option<&TcpStream> {
    if let Some(plain) = connection.downcast_ref::<TcpStream>() {
        return Some(plain);
    }
    connection
        .downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<TcpStream>>()
        .map(|tls| tls.get_ref().0)
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.exempt {
            return;
        }
        let mut open = self.counter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_and_places_come_back_when_connections_end() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let counter = ConnectionCounter::new(2, vec![proxy], Metrics::new().unwrap());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counter.admit(a).unwrap();
        let _second = counter.admit(a).unwrap();
        assert!(counter.admit(a).is_none(), "over the cap");
        assert!(
            counter.admit(b).is_some(),
            "another address is not affected"
        );
        let proxied: Vec<_> = (0..10).map(|_| counter.admit(proxy).unwrap()).collect();
        drop(first);
        assert!(counter.admit(a).is_some(), "a place came back");
        drop(proxied);
        assert!(counter.open.lock().unwrap().get(&proxy).is_none());
    }

    #[test]
    fn mapped_v4_is_v4_and_v6_counts_per_64() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let counter = ConnectionCounter::new(1, vec![proxy], Metrics::new().unwrap());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _a = counter.admit(mapped).unwrap();
        let _b = counter.admit(mapped).unwrap();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _c = counter.admit(one).unwrap();
        assert!(counter.admit(same_64).is_none(), "the same /64");
        assert!(counter.admit(other_64).is_some());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let _d = counter.admit(v4).unwrap();
        assert!(counter.admit("::ffff:192.0.2.7".parse().unwrap()).is_none());
    }
}
