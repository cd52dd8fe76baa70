//! Endpoint choice as the Kubernetes v1.0 userspace proxy made it (`LoadBalancerRR`):
//! round robin over the endpoints, ClientIP affinity that remembers a client's endpoint
//! while it keeps using it within the timeout, and a retry that moves a client on to the
//! next endpoint (dropping its affinity) when a dial failed.
//!
//! Pure: time is passed in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The dial timeouts of successive attempts (kube-proxy's `EndpointDialTimeouts`).
pub const DIAL_TIMEOUTS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// One service port's endpoints and the state of its choices.
#[derive(Clone, Debug, Default)]
pub struct Balancer {
    endpoints: Vec<SocketAddr>,
    next: usize,
    affinity: Option<Duration>,
    sticky: HashMap<IpAddr, (SocketAddr, Instant)>,
}

impl Balancer {
    /// A balancer over `endpoints`, with ClientIP affinity of this timeout if any.
    pub fn new(endpoints: Vec<SocketAddr>, affinity: Option<Duration>) -> Self {
        Self {
            endpoints,
            next: 0,
            affinity,
            sticky: HashMap::new(),
        }
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Replaces the endpoints (and the affinity timeout). Clients stuck to an endpoint that
    /// remains keep it; the round robin restarts when the set changed.
    pub fn update(&mut self, endpoints: Vec<SocketAddr>, affinity: Option<Duration>) {
        if endpoints != self.endpoints {
            self.next = 0;
        }
        self.sticky.retain(|_, (ep, _)| endpoints.contains(ep));
        if affinity.is_none() {
            self.sticky.clear();
        }
        self.endpoints = endpoints;
        self.affinity = affinity;
    }

    /// The endpoint for a new connection from `client`. `retry` is set after a failed
    /// dial: the client's affinity is ignored and replaced, and the round robin moves on.
    pub fn pick(&mut self, client: IpAddr, now: Instant, retry: bool) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        if let Some(ttl) = self.affinity
            && !retry
            && let Some((ep, last)) = self.sticky.get_mut(&client)
            && now.saturating_duration_since(*last) < ttl
        {
            *last = now;
            return Some(*ep);
        }
        let ep = self.endpoints[self.next % self.endpoints.len()];
        self.next = (self.next + 1) % self.endpoints.len();
        if self.affinity.is_some() {
            self.sticky.insert(client, (ep, now));
        }
        Some(ep)
    }

    /// Forgets affinities unused for longer than the timeout.
    pub fn expire(&mut self, now: Instant) {
        if let Some(ttl) = self.affinity {
            self.sticky
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < ttl);
        }
    }

    /// Clients with an affinity.
    pub fn sticky_clients(&self) -> usize {
        self.sticky.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    fn client(i: u8) -> IpAddr {
        IpAddr::from([192, 168, 0, i])
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let mut b = Balancer::new(eps(3), None);
        let now = Instant::now();
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(client(1), now, false).unwrap())
            .collect();
        assert_eq!(picks[..3], eps(3)[..]);
        assert_eq!(picks[3..], eps(3)[..]);
        assert_eq!(
            Balancer::new(vec![], None).pick(client(1), now, false),
            None
        );
    }

    #[test]
    fn affinity_sticks_until_the_timeout_and_a_retry_moves_on() {
        let ttl = Duration::from_secs(10);
        let mut b = Balancer::new(eps(3), Some(ttl));
        let t0 = Instant::now();
        let first = b.pick(client(1), t0, false).unwrap();
        for s in 1..5 {
            assert_eq!(
                b.pick(client(1), t0 + Duration::from_secs(s), false),
                Some(first)
            );
        }
        // Another client gets the next endpoint.
        assert_ne!(b.pick(client(2), t0, false), Some(first));
        // Unused for longer than the timeout: a new choice.
        let later = t0 + Duration::from_secs(4) + ttl;
        assert_ne!(b.pick(client(1), later, false), Some(first));
        // A failed dial replaces the affinity.
        let now = b.pick(client(3), later, false).unwrap();
        let moved = b.pick(client(3), later, true).unwrap();
        assert_ne!(now, moved);
        assert_eq!(b.pick(client(3), later, false), Some(moved));
    }

    #[test]
    fn updates_keep_affinities_to_remaining_endpoints() {
        let ttl = Duration::from_secs(10);
        let mut b = Balancer::new(eps(3), Some(ttl));
        let now = Instant::now();
        let a = b.pick(client(1), now, false).unwrap();
        let c = b.pick(client(2), now, false).unwrap();
        let remaining: Vec<_> = eps(3).into_iter().filter(|e| *e != c).collect();
        b.update(remaining.clone(), Some(ttl));
        assert_eq!(b.pick(client(1), now, false), Some(a));
        assert!(remaining.contains(&b.pick(client(2), now, false).unwrap()));
        b.expire(now + ttl);
        assert_eq!(b.sticky_clients(), 0);
    }
}
