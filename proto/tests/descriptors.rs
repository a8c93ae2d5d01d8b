//! The compiled API is what clients and reflection will see.

use prost::Message;
use tally_proto::FILE_DESCRIPTOR_SET;
use tally_proto::v1::ResultCode;

#[test]
fn the_descriptor_set_lists_every_service() {
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("a valid descriptor set");
    let mut services: Vec<String> = set
        .file
        .iter()
        .flat_map(|file| file.service.iter().map(move |service| format!("{}.{}", file.package(), service.name())))
        .collect();
    services.sort();
    assert_eq!(services, ["tally.v1.AdminService", "tally.v1.LedgerService"]);
}

#[test]
fn result_codes_are_numbered_densely_from_ok() {
    assert_eq!(ResultCode::try_from(0), Ok(ResultCode::Ok));
    let count = (0..).take_while(|number| ResultCode::try_from(*number).is_ok()).count();
    assert_eq!(count, 69, "one wire code per ledger result code");
    assert_eq!(
        ResultCode::try_from(68).map(|code| code.as_str_name()),
        Ok("RESULT_CODE_EXISTS_WITH_DIFFERENT_TIMEOUT")
    );
}
