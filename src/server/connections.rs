//! Open connections per client address, capped so that one address cannot hold every file
//! descriptor of the server. Counted when actix accepts a connection, released when the
//! connection's state drops; a connection over the cap is shut down before any byte of it
//! is read.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use actix_web::dev::Extensions;

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
}

impl ConnectionCounter {
    /// At most `per_address` open connections per address, except from `exempt`.
    pub fn new(per_address: usize, exempt: Vec<IpAddr>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            per_address,
            exempt,
            open: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// A place for one more connection from `ip`, or `None` when it holds its share.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        if !self.exempt.contains(&ip) {
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
        })
    }

    /// The `on_connect` hook: admits the connection or shuts it down at once.
    pub fn on_connect(self: &Arc<Self>, connection: &dyn Any, data: &mut Extensions) {
        let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
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

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.counter.exempt.contains(&self.ip) {
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
}
