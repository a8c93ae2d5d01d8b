//! What a request signature costs: signing and verifying ML-DSA-65 on aws-lc-rs, and verifying a
//! whole request (hashing its bytes with blake3, then the signature), on one core.
//!
//! `cargo bench -p tally-benches --bench signatures`; figures go to BENCHMARKS.md. One signature
//! covers a request of up to 8,190 transfers (about 1 MiB of protobuf), so these set what
//! signing costs per transfer.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_identity::{
    Algorithm, AwsLcVerifier, ClusterId, Domain, MlDsaKeyPair, RequestSigner, Signer, Verifier, sign_request,
    verify_request,
};

fn signatures(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ml_dsa");
    for algorithm in Algorithm::ALL {
        let key = MlDsaKeyPair::from_seed(algorithm, &[7; 32]).unwrap();
        let signature = key.sign(Domain::Request, b"113 bytes stand-in").unwrap();
        group.bench_function(format!("sign_{}", algorithm.code()), |bencher| {
            bencher.iter(|| key.sign(Domain::Request, black_box(b"113 bytes stand-in")).unwrap())
        });
        group.bench_function(format!("verify_{}", algorithm.code()), |bencher| {
            bencher.iter(|| {
                AwsLcVerifier.verify(key.public_key(), Domain::Request, black_box(b"113 bytes stand-in"), &signature)
            })
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group("request");
    let key = MlDsaKeyPair::from_seed(Algorithm::MlDsa65, &[8; 32]).unwrap();
    let signer = RequestSigner {
        cluster: ClusterId([1; 16]),
        principal: 9,
        key_id: key.public_key().key_id(),
        request_id: 1,
        deadline_unix_nanoseconds: u64::MAX,
    };
    for (name, bytes) in [("1_transfer_130_bytes", 130_usize), ("8190_transfers_1_mib", 8_190 * 128)] {
        let request: Vec<u8> = (0..bytes).map(|index| u8::try_from(index % 251).expect("below 251")).collect();
        let signature = sign_request(&key, &signer, &request).unwrap();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(format!("sign_{name}"), |bencher| {
            bencher.iter(|| sign_request(&key, &signer, black_box(&request)).unwrap())
        });
        group.bench_function(format!("verify_{name}"), |bencher| {
            bencher.iter(|| verify_request(&AwsLcVerifier, key.public_key(), &signer, black_box(&request), &signature))
        });
    }
    group.finish();
}

criterion_group!(benches, signatures);
criterion_main!(benches);
