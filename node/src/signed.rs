//! The gateway's side of signed requests and registry changes: reading the envelope, checking the
//! TLS identity against it, and turning the ledger's refusals into gRPC statuses.
//!
//! Every check the ledger makes at apply the gateway makes first, against the last applied
//! registry and a committed read view (`tally_state_machine::state_machine::precheck`), so that a
//! bad request is refused before it takes a log entry; the ledger's checks at apply decide.
//! Errors name what failed: `UNAUTHENTICATED: certificate for principal 7 does not match request
//! principal 9`, `PERMISSION_DENIED: principal 9 may not debit account code 900 on ledger 978`.

use tally_consensus::signed_entry::{ChangeEntry, EntryApproval, EntryRequest};
use tally_consensus::types::Refusal;
use tally_identity::certs::Identity;
use tally_proto::v1 as wire;
use tally_state_machine::registry::RegistryChange;
use tally_state_machine::signed::{RefusalKind, RequestRefusal};
use tonic::{Request, Status};

use crate::connections::ConnectionInfo;
use crate::convert::u128_from;

/// The trailer that carries a refusal's number (`tally.v1.RequestRefusal`, or the registry
/// change refusal's).
pub const REFUSAL_TRAILER: &str = "tally-refusal";

/// Refuses a request whose connection's certificate names another principal than the request
/// (for a forwarded call, the principal the forwarding replica passed on; it checked it too).
pub fn check_principal<T>(request: &Request<T>, principal: u64) -> Result<(), Status> {
    let certified = crate::replica::principal_of(request);
    let replica = matches!(
        request.extensions().get::<ConnectionInfo>().and_then(|info| info.identity),
        Some(Identity::Replica(_))
    );
    match certified {
        Some(certified) if certified != principal => Err(Status::unauthenticated(format!(
            "certificate for principal {certified} does not match request principal {principal}"
        ))),
        None if replica => Err(Status::unauthenticated(format!(
            "a replica forwarded request principal {principal}'s request without the principal it authenticated"
        ))),
        _ => Ok(()),
    }
}

/// The envelope of a signed request, as a log entry carries it.
pub fn entry_request(message: wire::SignedRequest) -> Result<EntryRequest, Status> {
    let key_id: [u8; 16] =
        message.key_id.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!("key_id: a key id is 16 bytes, not {}", message.key_id.len()))
        })?;
    if message.principal == 0 {
        return Err(Status::invalid_argument("principal: 0 names no principal"));
    }
    Ok(EntryRequest {
        principal: message.principal,
        key_id,
        request_id: u128_from(message.request_id.as_ref()),
        deadline: message.deadline_unix_nanoseconds,
        signature: message.signature,
        body: message.body,
    })
}

/// The entry of a registry change, its timestamp left to group commit, and the change it carries.
pub fn change_entry(message: &wire::RegistryChangeRequest) -> Result<(ChangeEntry, RegistryChange), Status> {
    if message.approvals.len() > tally_state_machine::registry::OPERATORS_MAX {
        return Err(Status::invalid_argument(format!(
            "approvals: {} approvals; a registry has at most {} operators",
            message.approvals.len(),
            tally_state_machine::registry::OPERATORS_MAX
        )));
    }
    let change = tally_consensus::signed_entry::change_of(&message.change)
        .map_err(|detail| Status::invalid_argument(format!("change: {detail}")))?;
    let entry = ChangeEntry {
        timestamp: 0,
        change_id: u128_from(message.change_id.as_ref()),
        deadline: message.deadline_unix_nanoseconds,
        body: message.change.clone(),
        approvals: message
            .approvals
            .iter()
            .map(|approval| EntryApproval { operator: approval.operator, signature: approval.signature.clone() })
            .collect(),
    };
    Ok((entry, change))
}

fn with_code(mut status: Status, code: u8) -> Status {
    status.metadata_mut().insert(REFUSAL_TRAILER, u16::from(code).into());
    status
}

/// The status of a request the ledger refused whole.
pub fn request_refused(refusal: &RequestRefusal) -> Status {
    status_of(refusal.kind(), refusal.code(), refusal.to_string())
}

/// The status of a refusal the ledger reported from apply.
pub fn applied_refusal(refusal: &Refusal) -> Status {
    status_of(RequestRefusal::kind_of_code(refusal.code), refusal.code, refusal.message.clone())
}

fn status_of(kind: RefusalKind, code: u8, message: String) -> Status {
    let status = match kind {
        RefusalKind::Invalid => Status::invalid_argument(message),
        RefusalKind::Unauthenticated => Status::unauthenticated(message),
        RefusalKind::PermissionDenied => Status::permission_denied(message),
    };
    with_code(status, code)
}

/// The status of a registry change the ledger refused: FAILED_PRECONDITION (the registry is not in
/// the state the change needs), or UNAUTHENTICATED for approvals that do not add up.
pub fn change_refused(refusal: &Refusal) -> Status {
    let status = match refusal.code {
        6..=9 => Status::unauthenticated(refusal.message.clone()),
        2..=4 | 26 => Status::invalid_argument(refusal.message.clone()),
        _ => Status::failed_precondition(refusal.message.clone()),
    };
    with_code(status, refusal.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn from(identity: Option<Identity>) -> Request<()> {
        let mut request = Request::new(());
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        request.extensions_mut().insert(ConnectionInfo { remote, identity });
        request
    }

    #[test]
    fn a_request_must_come_from_the_principal_it_names() {
        let refused = check_principal(&from(Some(Identity::Principal(7))), 9).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), "certificate for principal 7 does not match request principal 9");
        assert!(check_principal(&from(Some(Identity::Principal(9))), 9).is_ok());
        let mut forwarded = from(Some(Identity::Replica(2)));
        forwarded.metadata_mut().insert(crate::replica::FORWARDED, "1".parse().unwrap());
        assert!(check_principal(&forwarded, 9).is_err(), "forwarded without the principal");
        forwarded.metadata_mut().insert(crate::replica::PRINCIPAL, "9".parse().unwrap());
        assert!(check_principal(&forwarded, 9).is_ok(), "forwarded by a replica that checked principal 9");
        forwarded.metadata_mut().insert(crate::replica::PRINCIPAL, "7".parse().unwrap());
        assert!(check_principal(&forwarded, 9).is_err(), "forwarded for another principal");
        assert!(check_principal(&from(None), 9).is_ok(), "plaintext: no certificate to compare");
    }

    #[test]
    fn refusals_map_to_the_status_of_their_family_with_their_code() {
        let denied = request_refused(&RequestRefusal::DebitAccountCodeNotPermitted {
            principal: 9,
            code: 900,
            ledger: 978,
            index: 2,
        });
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(denied.message(), "principal 9 may not debit account code 900 on ledger 978 (event 2)");
        assert_eq!(denied.metadata().get(REFUSAL_TRAILER).unwrap(), "14");
        let applied = applied_refusal(&Refusal { code: 8, message: "bad".into() });
        assert_eq!(applied.code(), tonic::Code::Unauthenticated);
        let reused = applied_refusal(&Refusal { code: 11, message: "reused".into() });
        assert_eq!(reused.code(), tonic::Code::InvalidArgument);
    }
}
