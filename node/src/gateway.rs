//! The `LedgerService` every replica serves: any replica accepts any request.
//!
//! Writes are checked field by field, then handed to group commit on the leader, or forwarded once
//! to the leader by a follower. Reads are linearizable: the leader confirms it still leads (read
//! index) and answers from a read view that includes everything committed before the request; a
//! follower forwards reads to the leader. Every answer names the leader, and every error that a
//! different replica could answer carries the leader in its metadata (`x-tally-leader-id`,
//! `x-tally-leader-address`). Requests in flight are bounded; a request that cannot reach a quorum
//! fails with `UNAVAILABLE` when its deadline passes.

use std::future::Future;
use std::sync::Arc;

use tally_consensus::LedgerReadView;
use tally_proto::v1 as wire;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tally_proto::v1::ledger_service_server::LedgerService;
use tally_state_machine::constants::EVENTS_PER_BATCH_MAX;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::convert::{self, FieldError};
use crate::disk::DiskSpace;
use crate::group_commit::{Events, GroupCommit, WriteError, Written};
use crate::reads::{Answer, Answers};
use crate::replica::{Replica, principal_of};
use crate::signed;
use tally_consensus::signed_entry::MlDsaCheck;
use tally_state_machine::state_machine::precheck;

/// The gateway's service.
#[derive(Clone, Debug)]
pub struct Gateway {
    replica: Arc<Replica>,
    group_commit: GroupCommit,
    limits: GatewayLimits,
    in_flight: InFlight,
    disk: Arc<DiskSpace>,
}

/// What the gateway admits at once, and per request.
#[derive(Clone, Copy, Debug)]
pub struct GatewayLimits {
    pub requests_in_flight_max: usize,
    pub request_bytes_in_flight_max: usize,
    /// Events in one write request (`group_commit.events_per_batch_max`).
    pub events_per_request_max: usize,
}

/// Requests in flight are counted in units of this many bytes (a semaphore counts in `u32`).
const IN_FLIGHT_UNIT_BYTES: usize = 1024;

/// The permits a request holds while it is served.
#[derive(Debug)]
struct Admitted {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The requests being served, bounded in count and in bytes.
#[derive(Clone, Debug)]
struct InFlight {
    requests: Arc<Semaphore>,
    /// Kibibytes of requests in flight, at most `request_bytes_in_flight_max` of them.
    kibibytes: Arc<Semaphore>,
    requests_max: usize,
    bytes_max: usize,
}

impl InFlight {
    fn new(requests_max: usize, bytes_max: usize) -> InFlight {
        InFlight {
            requests: Arc::new(Semaphore::new(requests_max)),
            kibibytes: Arc::new(Semaphore::new(bytes_max / IN_FLIGHT_UNIT_BYTES)),
            requests_max,
            bytes_max,
        }
    }

    /// Admits a request of `encoded_bytes` within both limits, or refuses it with
    /// RESOURCE_EXHAUSTED naming the limit (the SDK retries: it is this moment's load, not the
    /// request). Refused requests hold nothing.
    fn admit(&self, encoded_bytes: usize) -> Result<Admitted, Status> {
        let request = Arc::clone(&self.requests).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "more than {} requests in flight on this replica (limits.requests_in_flight_max)",
                self.requests_max
            ))
        })?;
        let units = encoded_bytes.div_ceil(IN_FLIGHT_UNIT_BYTES).max(1);
        let bytes = u32::try_from(units)
            .ok()
            .and_then(|units| Arc::clone(&self.kibibytes).try_acquire_many_owned(units).ok())
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "requests in flight on this replica would hold more than {} bytes \
                     (limits.request_bytes_in_flight_max)",
                    self.bytes_max
                ))
            })?;
        Ok(Admitted { _request: request, _bytes: bytes })
    }
}

/// Cluster time as this replica's clock has it, for checking deadlines before proposing.
fn unix_nanoseconds() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

fn invalid(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), Status> {
    if count == 0 {
        return Err(Status::invalid_argument(format!("{field}: the request has no events")));
    }
    if count > max {
        return Err(Status::invalid_argument(format!(
            "{field}: {count} events, above the limit of {max} per request (group_commit.events_per_batch_max)"
        )));
    }
    Ok(())
}

/// Checks a write's event count and converts each wire event, naming the first bad field.
fn convert_events<W, E>(
    field: &str,
    events: &[W],
    events_max: usize,
    convert: impl Fn(&W, usize) -> Result<E, FieldError>,
) -> Result<Vec<E>, Status> {
    check_count(field, events.len(), events_max)?;
    events.iter().enumerate().map(|(index, event)| convert(event, index)).collect::<Result<_, _>>().map_err(invalid)
}

impl Gateway {
    pub fn new(
        replica: Arc<Replica>,
        group_commit: GroupCommit,
        limits: GatewayLimits,
        disk: Arc<DiskSpace>,
    ) -> Gateway {
        assert!(limits.events_per_request_max <= EVENTS_PER_BATCH_MAX);
        Gateway {
            replica,
            group_commit,
            in_flight: InFlight::new(limits.requests_in_flight_max, limits.request_bytes_in_flight_max),
            limits,
            disk,
        }
    }

    /// Admits a request within the limits on requests and on their bytes in flight.
    fn admit(&self, request: &impl prost::Message) -> Result<Admitted, Status> {
        self.in_flight.admit(request.encoded_len())
    }

    /// Writes through group commit on the leader, or forwards to it ([`Replica::on_leader`]).
    async fn write<Req, Call, Fut>(
        &self,
        request: Request<Req>,
        events: Events,
        call: Call,
    ) -> Result<Response<wire::CreateResponse>, Status>
    where
        Call: FnOnce(LedgerServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<wire::CreateResponse>, Status>>,
    {
        let started = std::time::Instant::now();
        let client = |address: &str| self.replica.ledger_client(address);
        let local = async |_request, deadline| self.commit(events, deadline).await;
        let result = self.replica.on_leader(request, client, call, local).await;
        metrics::histogram!("tally_write_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn commit(&self, events: Events, deadline: Instant) -> Result<Response<wire::CreateResponse>, Status> {
        let written = self.commit_written(events, deadline).await?;
        let mut header = self.replica.header(None);
        header.applied_index = header.applied_index.max(written.log_index);
        let results = written.results.iter().map(|code| i32::from(*code)).collect();
        Ok(Response::new(wire::CreateResponse { header: Some(header), results }))
    }

    /// Proposes through group commit and waits for the outcome, with the write refusals every
    /// write shares (disk, clock, quorum, leadership).
    pub(crate) async fn commit_written(&self, events: Events, deadline: Instant) -> Result<Written, Status> {
        if let Some(reason) = self.disk.below_floor() {
            return Err(Status::resource_exhausted(reason));
        }
        // UNAVAILABLE: the SDK retries, and finds the leader this one hands over to.
        if let Some(reason) = self.replica.clock.refusal() {
            return Err(Status::unavailable(reason));
        }
        let written = match tokio::time::timeout_at(deadline, self.group_commit.submit(events)).await {
            Ok(written) => written,
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "no quorum confirmed the write within {} ms; it may still be applied: retry with the same ids",
                    self.replica.request_timeout.as_millis()
                )));
            }
        };
        let written = written.map_err(|error| match error {
            WriteError::NotLeader { leader: Some((id, node)) } => {
                Status::unavailable(format!("leadership moved to {id} at {}; retry there", node.address))
            }
            WriteError::NotLeader { leader: None } => Status::unavailable("leadership moved; retry".to_string()),
            WriteError::Unavailable(detail) => Status::unavailable(detail),
            WriteError::Refused(reason) => Status::aborted(format!("{reason}; nothing was applied: retry")),
            WriteError::Overloaded => Status::resource_exhausted(error.to_string()),
        })?;
        Ok(written)
    }

    /// A signed write (see [`crate::signed`]): checked on the replica that leads, against the
    /// registry as last applied, then proposed; the ledger checks it again at apply.
    async fn submit_signed(
        &self,
        request: Request<wire::SignedRequest>,
    ) -> Result<Response<wire::SubmitResponse>, Status> {
        let _permit = self.admit(request.get_ref())?;
        if self.replica.views.registry().is_none() {
            return Err(Status::failed_precondition(
                "this cluster has no genesis, so no key registry to check signatures against: send unsigned \
                 Create* calls to it, or start the cluster with a genesis",
            ));
        }
        signed::check_principal(&request, request.get_ref().principal)?;
        let forward = |mut client: LedgerServiceClient<Channel>, request| async move { client.submit(request).await };
        let client = |address: &str| self.replica.ledger_client(address);
        let local = async |request: Request<wire::SignedRequest>, deadline| {
            // The body moves into the entry: a request of 8,190 transfers is a megabyte.
            let entry = signed::entry_request(request.into_inner())?;
            let signed = entry.to_signed();
            let events = match &signed.operation {
                Ok(operation) => operation.event_count(),
                Err(detail) => return Err(Status::invalid_argument(format!("body: {detail}"))),
            };
            check_count("body", events, self.limits.events_per_request_max)?;
            let registry = self.replica.views.registry().expect("a secured cluster stays secured");
            let now = unix_nanoseconds();
            let checking = std::time::Instant::now();
            let checked = precheck(&registry, &self.replica.views.view(), &signed, now, &MlDsaCheck);
            metrics::histogram!("tally_signed_precheck_seconds").record(checking.elapsed().as_secs_f64());
            checked.map_err(|refusal| signed::request_refused(&refusal))?;
            let written = self.commit_written(Events::Signed { request: entry, events }, deadline).await?;
            if let Some(refusal) = &written.refusal {
                return Err(signed::applied_refusal(refusal));
            }
            let mut header = self.replica.header(None);
            header.applied_index = header.applied_index.max(written.log_index);
            let results = written.results.iter().map(|code| i32::from(*code)).collect();
            Ok(Response::new(wire::SubmitResponse { header: Some(header), results, repeated: written.repeated }))
        };
        let started = std::time::Instant::now();
        let result = self.replica.on_leader(request, client, forward, local).await;
        metrics::histogram!("tally_write_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// An unsigned write is refused on a secured cluster before anything else.
    fn refuse_unsigned(&self) -> Result<(), Status> {
        if self.replica.views.registry().is_some() {
            return Err(Status::unauthenticated(
                "this cluster takes signed requests only (LedgerService.Submit, signed with a registered key of \
                 the principal); the SDK signs when given the principal's signing key",
            ));
        }
        Ok(())
    }

    /// The one read path: every read call is admitted, then answered by the leader
    /// ([`Replica::on_leader`]) with `answer`, after a read-index barrier, from a read view that
    /// holds everything committed before the request.
    async fn read<Req, Resp, Call, Fut>(
        &self,
        request: Request<Req>,
        answer: Answer<Req, Resp>,
        call: Call,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Call: FnOnce(LedgerServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let _permit = self.admit(request.get_ref())?;
        let client = |address: &str| self.replica.ledger_client(address);
        let local = async |request: Request<Req>, deadline| {
            let ledgers = self.readable_ledgers(&request)?;
            let view = self.linearizable_view(deadline).await?;
            let header = self.replica.header(Some(&view));
            answer(Answers::new(&view, header).within(&ledgers), request.get_ref()).map(Response::new)
        };
        self.replica.on_leader(request, client, call, local).await
    }

    /// The ledgers a read may see: on a secured cluster the reader's role must have the read
    /// permission, and names them (none: all). Without TLS (a development cluster) or a genesis,
    /// every ledger.
    fn readable_ledgers<Req>(&self, request: &Request<Req>) -> Result<Vec<u32>, Status> {
        let (Some(registry), Some(principal)) = (self.replica.views.registry(), principal_of(request)) else {
            return Ok(Vec::new());
        };
        let role = &registry
            .principals
            .get(&principal)
            .ok_or_else(|| {
                Status::permission_denied(format!("principal {principal} is not registered, so may not read"))
            })?
            .role;
        if !role.permissions.contains(tally_state_machine::registry::Permissions::READ) {
            return Err(Status::permission_denied(format!(
                "principal {principal} may not read (its role has no read permission)"
            )));
        }
        Ok(role.ledgers.clone())
    }

    /// A read view that holds everything committed before now: the leader confirms with a quorum
    /// that it still leads (read index), then waits until its store has committed that far.
    async fn linearizable_view(&self, deadline: Instant) -> Result<LedgerReadView, Status> {
        let read_log_id = match tokio::time::timeout_at(deadline, self.replica.raft.ensure_linearizable()).await {
            Ok(Ok(read_log_id)) => read_log_id,
            Ok(Err(error)) => return Err(Status::unavailable(format!("read not confirmed: {error}"))),
            Err(_) => return Err(Status::unavailable("no quorum confirmed leadership for this read in time")),
        };
        // Applied is not yet visible: a busy replica commits its store a little later.
        let visible = self.replica.views.wait_committed(read_log_id.map(|log_id| log_id.index));
        if tokio::time::timeout_at(deadline, visible).await.is_err() {
            return Err(Status::unavailable("the ledger did not reach the read's log index in time"));
        }
        Ok(self.replica.views.view())
    }
}

/// The ledger service's calls, one line each: a write names its events, its conversion and its
/// kind; a read names its answer ([`Answers`]). Each forwards with the call of its own name.
macro_rules! ledger_service {
    (
        writes { $($write:ident($write_request:ty) => $field:ident, $convert:path, $kind:ident;)* }
        reads { $($read:ident($read_request:ty) -> $read_response:ty;)* }
    ) => {
        #[tonic::async_trait]
        impl LedgerService for Gateway {
            $(
                async fn $write(
                    &self,
                    request: Request<$write_request>,
                ) -> Result<Response<wire::CreateResponse>, Status> {
                    let forward = |mut client: LedgerServiceClient<Channel>, request| async move {
                        client.$write(request).await
                    };
                    self.refuse_unsigned()?;
                    let _permit = self.admit(request.get_ref())?;
                    let limit = self.limits.events_per_request_max;
                    let events = convert_events(stringify!($field), &request.get_ref().$field, limit, $convert)?;
                    self.write(request, Events::$kind(events), forward).await
                }
            )*
            async fn submit(&self, request: Request<wire::SignedRequest>) -> Result<Response<wire::SubmitResponse>, Status> {
                self.submit_signed(request).await
            }
            $(
                async fn $read(&self, request: Request<$read_request>) -> Result<Response<$read_response>, Status> {
                    let forward = |mut client: LedgerServiceClient<Channel>, request| async move {
                        client.$read(request).await
                    };
                    self.read(request, |answers: Answers<'_>, message| answers.$read(message), forward).await
                }
            )*
        }
    };
}

ledger_service! {
    writes {
        create_ledgers(wire::CreateLedgersRequest) => ledgers, convert::new_ledger, Ledgers;
        create_accounts(wire::CreateAccountsRequest) => accounts, convert::new_account, Accounts;
        create_transfers(wire::CreateTransfersRequest) => transfers, convert::new_transfer, Transfers;
    }
    reads {
        lookup_ledgers(wire::LookupLedgersRequest) -> wire::LookupLedgersResponse;
        lookup_accounts(wire::LookupRequest) -> wire::LookupAccountsResponse;
        lookup_transfers(wire::LookupRequest) -> wire::LookupTransfersResponse;
        get_account_transfers(wire::AccountTransfersRequest) -> wire::TransfersPage;
        get_account_balances(wire::AccountBalancesRequest) -> wire::AccountBalancesPage;
        query_ledgers(wire::QueryLedgersRequest) -> wire::LedgersPage;
        query_accounts(wire::QueryRequest) -> wire::AccountsPage;
        query_transfers(wire::QueryRequest) -> wire::TransfersPage;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn requests_in_flight_are_bounded_by_bytes_as_well_as_by_count() {
        let in_flight = InFlight::new(10, 256 * 1024);
        let first = in_flight.admit(100 * 1024).expect("100 KiB of 256 KiB");
        let second = in_flight.admit(100 * 1024).expect("200 KiB of 256 KiB");
        let refused = in_flight.admit(100 * 1024).expect_err("300 KiB is above 256 KiB");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("limits.request_bytes_in_flight_max"), "{}", refused.message());
        // A refused request holds nothing: a small one still fits, and a finished one frees its bytes.
        let small = in_flight.admit(10).expect("one unit fits beside 200 KiB");
        drop(first);
        let third = in_flight.admit(100 * 1024).expect("the first request's bytes were returned");
        drop((second, small, third));
        assert!(in_flight.admit(256 * 1024).is_ok(), "everything was returned");
    }

    #[test]
    fn requests_in_flight_are_bounded_by_count() {
        let in_flight = InFlight::new(2, 256 * 1024);
        let held = [in_flight.admit(1).unwrap(), in_flight.admit(1).unwrap()];
        let refused = in_flight.admit(1).expect_err("a third request is above the count");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("limits.requests_in_flight_max"), "{}", refused.message());
        drop(held);
        assert!(in_flight.admit(1).is_ok());
    }

    #[test]
    fn a_request_above_the_byte_budget_is_refused_not_stuck() {
        let in_flight = InFlight::new(2, 4 * 1024);
        let refused = in_flight.admit(5 * 1024).expect_err("larger than the whole budget");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(in_flight.admit(4 * 1024).is_ok(), "the refused request's count permit was returned");
    }

    #[test]
    fn a_write_is_refused_above_the_events_per_request_limit() {
        let convert = |event: &u32, _index: usize| Ok::<u32, FieldError>(*event);
        assert_eq!(convert_events("transfers", &[1, 2, 3], 3, convert).unwrap(), vec![1, 2, 3]);
        let refused = convert_events("transfers", &[1, 2, 3, 4], 3, convert).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("group_commit.events_per_batch_max"), "{}", refused.message());
        assert!(refused.message().contains("4 events"), "{}", refused.message());
        let empty = convert_events("transfers", &[], 3, convert).unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
    }
}
