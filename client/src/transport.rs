//! Endpoints, leader hints, circuit breakers and the retry loop under every call.
//!
//! Every call carries a deadline. An attempt goes to the leader when one is known (any replica
//! forwards, but the leader saves a hop), otherwise to the next endpoint whose breaker is closed.
//! A retryable failure waits a jittered, exponentially growing backoff and tries again, until the
//! deadline: never past it.
//!
//! Why not a retry crate (`backon`, `tokio-retry`): they give the delays and the loop, but every
//! attempt here also picks its endpoint by leader hint and breaker, learns the leader from the
//! answer or the error, counts the breaker's failures and keeps each endpoint's last error for the
//! caller; and the wait must stop at the call's deadline. That leaves the crate three lines of
//! arithmetic (full jitter, doubling, a cap) to own, behind an adapter longer than they are.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::security::Security;

use crate::error::{Attempt, Error, classify};

/// Consecutive failures that open an endpoint's breaker.
pub const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker keeps an endpoint out of rotation before one probe is let through.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(2);
/// Endpoints learned from leader hints, at most, beyond the configured ones.
const LEARNED_ENDPOINTS_MAX: usize = 64;
const BACKOFF_FIRST: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest message the SDK sends or accepts (the cluster's default limit).
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// One replica's address, its lazily connected channel and its breaker.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub address: String,
    pub channel: Channel,
    breaker: Mutex<Breaker>,
}

/// Counts consecutive failures; open (skipped) for a cooldown after too many.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    pub fn success(&mut self) {
        *self = Breaker::default();
    }

    pub fn failure(&mut self, now: Instant) {
        self.consecutive_failures += 1;
        if self.consecutive_failures >= BREAKER_FAILURES {
            self.open_until = Some(now + BREAKER_COOLDOWN);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Transport {
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    configured: usize,
    /// The endpoint believed to be the leader.
    leader: RwLock<Option<String>>,
    next: Mutex<usize>,
    security: Security,
}

pub(crate) fn channel(address: &str, security: &Security) -> Result<Channel, Error> {
    let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    let endpoint = TonicEndpoint::from_shared(uri)
        .map_err(|error| Error::Usage(format!("endpoint {address:?} is not a valid address: {error}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(match security {
        Security::Tls(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
        Security::InsecurePlaintext => endpoint.connect_lazy(),
    })
}

impl Transport {
    /// Endpoints as `host:port`; a host that resolves to several addresses gives one endpoint each.
    pub async fn new(addresses: &[String], security: Security) -> Result<Transport, Error> {
        if addresses.is_empty() {
            return Err(Error::Usage("no endpoints: give at least one host:port".into()));
        }
        let mut endpoints = Vec::new();
        for address in addresses {
            let address = address.trim();
            let mut resolved: Vec<String> = match tokio::net::lookup_host(address).await {
                Ok(found) => found.map(|socket| socket.to_string()).collect(),
                Err(error) => return Err(Error::Usage(format!("endpoint {address:?} does not resolve: {error}"))),
            };
            let mut seen = std::collections::HashSet::new();
            resolved.retain(|name| seen.insert(name.clone()));
            // A literal address keeps its spelling, so that it matches the cluster's leader hints.
            let names = if resolved.len() <= 1 { vec![address.to_owned()] } else { resolved };
            for name in names {
                if !endpoints.iter().any(|endpoint: &Arc<Endpoint>| endpoint.address == name) {
                    endpoints.push(Arc::new(Endpoint {
                        channel: channel(&name, &security)?,
                        address: name,
                        breaker: Mutex::default(),
                    }));
                }
            }
        }
        let configured = endpoints.len();
        Ok(Transport {
            endpoints: RwLock::new(endpoints),
            configured,
            leader: RwLock::new(None),
            next: Mutex::new(0),
            security,
        })
    }

    pub fn addresses(&self) -> Vec<String> {
        self.endpoints.read().expect("endpoints lock").iter().map(|endpoint| endpoint.address.clone()).collect()
    }

    /// The endpoint for `address`, adding it if the cluster named it (bounded).
    pub fn endpoint(&self, address: &str) -> Result<Arc<Endpoint>, Error> {
        if let Some(found) =
            self.endpoints.read().expect("endpoints lock").iter().find(|endpoint| endpoint.address == address)
        {
            return Ok(Arc::clone(found));
        }
        let endpoint = Arc::new(Endpoint {
            channel: channel(address, &self.security)?,
            address: address.to_owned(),
            breaker: Mutex::default(),
        });
        let mut endpoints = self.endpoints.write().expect("endpoints lock");
        if endpoints.len() < self.configured + LEARNED_ENDPOINTS_MAX {
            endpoints.push(Arc::clone(&endpoint));
        }
        Ok(endpoint)
    }

    fn note_leader(&self, address: Option<&str>) {
        let Some(address) = address.filter(|address| !address.is_empty()) else { return };
        let mut leader = self.leader.write().expect("leader lock");
        if leader.as_deref() != Some(address) {
            *leader = Some(address.to_owned());
        }
    }

    /// The endpoint for the next attempt: the leader if known and not broken, else round robin
    /// over endpoints with closed breakers, else the one whose breaker reopens first.
    fn pick(&self, now: Instant) -> Arc<Endpoint> {
        let leader = self.leader.read().expect("leader lock").clone();
        if let Some(address) = leader
            && let Ok(endpoint) = self.endpoint(&address)
            && endpoint.breaker.lock().expect("breaker lock").allows(now)
        {
            return endpoint;
        }
        let endpoints = self.endpoints.read().expect("endpoints lock");
        let mut next = self.next.lock().expect("rotation lock");
        for _ in 0..endpoints.len() {
            let endpoint = &endpoints[*next % endpoints.len()];
            *next = next.wrapping_add(1);
            if endpoint.breaker.lock().expect("breaker lock").allows(now) {
                return Arc::clone(endpoint);
            }
        }
        let soonest = endpoints
            .iter()
            .min_by_key(|endpoint| endpoint.breaker.lock().expect("breaker lock").open_until)
            .expect("at least one endpoint");
        Arc::clone(soonest)
    }

    /// Runs `attempt` until it succeeds, fails for good, or `deadline` passes. `hint` reads the
    /// leader's address out of a successful answer.
    pub async fn call<T, F, Fut>(
        &self,
        deadline: Duration,
        target: Option<&str>,
        hint: impl Fn(&T) -> Option<String>,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let until = started + deadline;
        let mut attempts = 0;
        let mut last_errors: Vec<(String, String)> = Vec::new();
        let mut backoff = BACKOFF_FIRST;
        loop {
            let now = Instant::now();
            if now >= until {
                return Err(Error::Unavailable { deadline, attempts, last_errors });
            }
            let endpoint = match target {
                Some(address) => self.endpoint(address)?,
                None => self.pick(now),
            };
            attempts += 1;
            let remaining = until - now;
            let outcome = tokio::time::timeout(remaining, attempt(endpoint.channel.clone(), remaining)).await;
            let failure = match outcome {
                Ok(Ok(response)) => {
                    endpoint.breaker.lock().expect("breaker lock").success();
                    let answer = response.into_inner();
                    if target.is_none() {
                        self.note_leader(hint(&answer).as_deref());
                    }
                    return Ok(answer);
                }
                Ok(Err(status)) => {
                    let leader = status.metadata().get("x-tally-leader-address").and_then(|value| value.to_str().ok());
                    if target.is_none() {
                        self.note_leader(leader);
                    }
                    match classify(&endpoint.address, &status) {
                        Attempt::Fail(error) => return Err(error),
                        Attempt::Retry(message) => message,
                    }
                }
                Err(_) => "no answer before the deadline".to_owned(),
            };
            endpoint.breaker.lock().expect("breaker lock").failure(Instant::now());
            {
                // A failing leader is forgotten: the next attempt asks another replica.
                let mut leader = self.leader.write().expect("leader lock");
                if leader.as_deref() == Some(endpoint.address.as_str()) {
                    *leader = None;
                }
            }
            match last_errors.iter_mut().find(|(address, _)| *address == endpoint.address) {
                Some(entry) => entry.1 = failure,
                None => last_errors.push((endpoint.address.clone(), failure)),
            }
            // Full jitter: a crowd of clients retrying after a leader change spreads out.
            let pause =
                Duration::from_micros(fastrand::u64(0..=u64::try_from(backoff.as_micros()).unwrap_or(u64::MAX)));
            let wake = (Instant::now() + pause).min(until);
            tokio::time::sleep_until(wake).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_opens_after_consecutive_failures_and_lets_a_probe_through_after_the_cooldown() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 0..BREAKER_FAILURES - 1 {
            breaker.failure(now);
            assert!(breaker.allows(now));
        }
        breaker.failure(now);
        assert!(!breaker.allows(now));
        assert!(!breaker.allows(now + BREAKER_COOLDOWN / 2));
        assert!(breaker.allows(now + BREAKER_COOLDOWN));
        breaker.success();
        breaker.failure(now);
        assert!(breaker.allows(now), "a success resets the count");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_fails_at_the_deadline_naming_every_endpoint() {
        // Ports on 127.0.0.1 that nothing listens on: bind, read the port, close.
        let ports: Vec<u16> =
            (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        let addresses: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let transport = Transport::new(&addresses, Security::InsecurePlaintext).await.unwrap();
        let started = std::time::Instant::now();
        let deadline = Duration::from_millis(700);
        let result: Result<(), Error> = transport
            .call(
                deadline,
                None,
                |_| None,
                |channel, _| async move {
                    let mut client = tally_proto::v1::admin_service_client::AdminServiceClient::new(channel);
                    client.node_status(tally_proto::v1::NodeStatusRequest {}).await.map(|response| response.map(|_| ()))
                },
            )
            .await;
        let elapsed = started.elapsed();
        let error = result.unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(elapsed >= deadline && elapsed < deadline + Duration::from_millis(500), "{elapsed:?}");
        let message = error.to_string();
        for address in &addresses {
            assert!(message.contains(address.as_str()), "{message}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_several_addresses_gives_one_endpoint_each() {
        use std::net::ToSocketAddrs;
        let mut resolved: Vec<String> =
            "localhost:7101".to_socket_addrs().unwrap().map(|address| address.to_string()).collect();
        resolved.dedup();
        let transport =
            Transport::new(&["localhost:7101".into(), "127.0.0.1:7102".into()], Security::InsecurePlaintext)
                .await
                .unwrap();
        let addresses = transport.addresses();
        if resolved.len() > 1 {
            assert_eq!(&addresses[..resolved.len()], &resolved[..]);
        } else {
            assert_eq!(addresses[0], "localhost:7101", "a single address keeps its spelling");
        }
        assert_eq!(addresses.last().unwrap(), "127.0.0.1:7102");
        assert_eq!(addresses.len(), resolved.len().max(1) + 1);
    }

    #[tokio::test]
    async fn endpoints_that_do_not_parse_or_resolve_are_refused_up_front() {
        assert!(matches!(Transport::new(&[], Security::InsecurePlaintext).await, Err(Error::Usage(_))));
        let error = Transport::new(&["no-port-here".into()], Security::InsecurePlaintext).await.unwrap_err();
        assert!(error.to_string().contains("no-port-here"), "{error}");
    }
}
