//! One etcd endpoint per connection, rotating after a failure.
//!
//! etcd-client builds a tonic balanced channel over all the endpoints it is
//! given, and tonic's reconnecting service reports a dead member as ready
//! and fails each call routed to it ("tcp connect error"). With one member
//! of three down, a client over all three fails a share of its calls: the
//! sync session re-listed over and over and `/status` flapped to
//! "disconnected". So each session pins one endpoint, as etcd's own Go
//! client does, and the next session (after any failure) moves on to the
//! next one. Processes start at a random member so a fleet spreads out.

/// The endpoint list and which one the next session uses.
#[derive(Debug, Clone)]
pub struct Rotation {
    endpoints: Vec<String>,
    next: usize,
}

impl Rotation {
    pub fn new(endpoints: Vec<String>) -> Self {
        let next = if endpoints.len() > 1 {
            rand::random_range(0..endpoints.len())
        } else {
            0
        };
        Self { endpoints, next }
    }

    /// The endpoint to connect to now (empty if none were configured; the
    /// connect then fails with etcd-client's own error).
    pub fn current(&self) -> &str {
        self.endpoints
            .get(self.next)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Moves on after a failed session.
    pub fn advance(&mut self) {
        if !self.endpoints.is_empty() {
            self.next = (self.next + 1) % self.endpoints.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_every_endpoint_in_turn() {
        let eps: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut r = Rotation::new(eps.clone());
        let mut seen: Vec<String> = (0..3)
            .map(|_| {
                let e = r.current().to_string();
                r.advance();
                e
            })
            .collect();
        seen.sort();
        assert_eq!(seen, eps);
        let mut one = Rotation::new(vec!["x".into()]);
        one.advance();
        assert_eq!(one.current(), "x");
        assert_eq!(Rotation::new(vec![]).current(), "");
    }
}
