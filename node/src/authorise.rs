//! Who may call what on the gRPC API, by the identity the connection's certificate names
//! (`connections.rs`), before any service sees the call.
//!
//! - A principal's certificate calls the ledger and admin APIs. (What each principal may do, by
//!   its role, is the ledger's replicated registry's to say: issue 20's signed requests.)
//! - A replica's certificate calls them only to forward a call to the leader (marked
//!   `x-tally-forwarded`): it is a server and a relay, never a client of its own. A replica relays
//!   what a principal it authenticated asked for; once writes and admin operations carry their
//!   principal's signature, a relay can only pass on what was signed.
//! - A principal may not mark a call forwarded: the mark changes how a replica routes it.
//! - Health and reflection answer any certificate of the cluster.
//! - In plaintext (`insecure_plaintext`), there is no identity and everything is allowed.

use tally_identity::certs::Identity;
use tonic::Status;

use crate::connections::ConnectionInfo;
use crate::replica::FORWARDED;

/// The services that move money or change the cluster.
const GUARDED_SERVICES: &[&str] = &["/tally.v1.LedgerService/", "/tally.v1.AdminService/"];

/// Whether a call to `path` by `identity` (none in plaintext), `forwarded` or not, may go on.
pub fn authorise(identity: Option<Identity>, path: &str, forwarded: bool) -> Result<(), Status> {
    let guarded = GUARDED_SERVICES.iter().any(|service| path.starts_with(service));
    match identity {
        None => Ok(()),
        Some(Identity::Principal(id)) if forwarded => Err(Status::permission_denied(format!(
            "principal {id} may not send {FORWARDED}: only replicas forward calls"
        ))),
        Some(Identity::Principal(_)) => Ok(()),
        Some(Identity::Replica(_)) if !guarded || forwarded => Ok(()),
        Some(Identity::Replica(id)) => Err(Status::permission_denied(format!(
            "replica {id}'s certificate may not call {path}: replicas only forward calls to the leader; \
             call with a principal's certificate"
        ))),
    }
}

/// Why a gRPC call may not go on, if it may not: [`authorise`] applied to the identity of the
/// call's connection. The edge layer (`observe::EdgeLayer`) asks it of every call.
pub fn refusal<Body>(request: &http::Request<Body>) -> Option<Status> {
    let identity = request.extensions().get::<ConnectionInfo>().and_then(|info| info.identity);
    authorise(identity, request.uri().path(), request.headers().contains_key(FORWARDED)).err()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSFER: &str = "/tally.v1.LedgerService/CreateTransfers";
    const ADD_LEARNER: &str = "/tally.v1.AdminService/AddLearner";
    const HEALTH: &str = "/grpc.health.v1.Health/Check";

    #[test]
    fn a_replica_certificate_opens_the_api_only_to_forward() {
        for path in [TRANSFER, ADD_LEARNER] {
            let refused = authorise(Some(Identity::Replica(3)), path, false).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied);
            assert!(refused.message().contains("replica 3's certificate may not call"), "{}", refused.message());
            assert!(authorise(Some(Identity::Replica(3)), path, true).is_ok(), "a forwarded call goes on");
        }
        assert!(authorise(Some(Identity::Replica(3)), HEALTH, false).is_ok());
    }

    #[test]
    fn a_principal_calls_the_api_but_may_not_pose_as_a_forwarding_replica() {
        for path in [TRANSFER, ADD_LEARNER, HEALTH] {
            assert!(authorise(Some(Identity::Principal(9)), path, false).is_ok());
        }
        let refused = authorise(Some(Identity::Principal(9)), TRANSFER, true).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("principal 9 may not send x-tally-forwarded"), "{}", refused.message());
    }

    #[test]
    fn plaintext_has_no_identity_to_refuse() {
        assert!(authorise(None, ADD_LEARNER, false).is_ok());
    }
}
