//! The cluster's certificate authority and the certificates it issues: ML-DSA-87 for the CA,
//! ML-DSA-65 for replicas and principals, each naming one identity in a URI subject alternative
//! name.
//!
//! A certificate says who it belongs to, `tally://<cluster id>/replica/<id>` or
//! `tally://<cluster id>/principal/<id>`, and a listener authorises by that identity, never by
//! "signed by our CA" alone: a principal's certificate must not open the peer protocol, nor a
//! replica's the admin API ([`Identity::of_certificate`]). This module owns issuing and reading
//! those identities; it must never decide what an identity may do (that is the role's).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use aws_lc_rs::signature::{KeyPair as _, ML_DSA_87_SIGNING, PqdsaKeyPair};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ML_DSA_65, PKCS_ML_DSA_87, PublicKeyData, SanType, SignatureAlgorithm, SigningKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::request::ClusterId;

/// How long a CA certificate is valid by default: ten years (rotating the CA is a planned event).
pub const CA_VALIDITY_DEFAULT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a replica or principal certificate is valid by default: 90 days, so that rotation is
/// routine rather than an emergency.
pub const LEAF_VALIDITY_DEFAULT: Duration = Duration::from_secs(90 * 24 * 3600);

/// Who a certificate belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A replica of the cluster: the peer protocol, and the client API it serves.
    Replica(u64),
    /// A principal (a channel back-end, an integration, an auditor, an operator).
    Principal(u64),
}

impl Identity {
    /// The URI that names this identity in a certificate of `cluster`.
    pub fn uri(self, cluster: &ClusterId) -> String {
        let (kind, id) = match self {
            Identity::Replica(id) => ("replica", id),
            Identity::Principal(id) => ("principal", id),
        };
        format!("tally://{}/{kind}/{id}", cluster)
    }

    /// The identity a certificate of `cluster` names (its one `tally://` URI). A certificate of
    /// another cluster, or with no such URI or two, names none.
    pub fn of_certificate(certificate: &CertificateDer<'_>, cluster: &ClusterId) -> Result<Identity, CertError> {
        Identity::parse(&Identity::tally_uri(certificate)?, cluster)
    }

    /// The cluster a certificate's identity belongs to: a client learns it from its own
    /// certificate, and then accepts only replicas of that cluster.
    pub fn cluster_of_certificate(certificate: &CertificateDer<'_>) -> Result<ClusterId, CertError> {
        let uri = Identity::tally_uri(certificate)?;
        let named = uri.strip_prefix("tally://").and_then(|rest| rest.split('/').next()).unwrap_or_default();
        ClusterId::from_hex(named).ok_or_else(|| CertError::NoIdentity { uris: vec![uri.clone()] })
    }

    /// A certificate's one `tally://` URI.
    fn tally_uri(certificate: &CertificateDer<'_>) -> Result<String, CertError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
            .map_err(|error| CertError::Unreadable(error.to_string()))?;
        let names = parsed
            .subject_alternative_name()
            .map_err(|error| CertError::Unreadable(error.to_string()))?
            .map(|extension| extension.value.general_names.clone())
            .unwrap_or_default();
        let uris: Vec<&str> = names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("tally://") => Some(*uri),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(CertError::NoIdentity { uris: uris.iter().map(|uri| uri.to_string()).collect() });
        };
        Ok((*uri).to_owned())
    }

    fn parse(uri: &str, cluster: &ClusterId) -> Result<Identity, CertError> {
        let unknown = || CertError::NoIdentity { uris: vec![uri.to_owned()] };
        let rest = uri.strip_prefix("tally://").ok_or_else(unknown)?;
        let mut parts = rest.split('/');
        let (Some(named_cluster), Some(kind), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unknown());
        };
        if named_cluster != cluster.to_string() {
            return Err(CertError::OtherCluster { named: named_cluster.to_owned(), expected: cluster.to_string() });
        }
        let id: u64 = id.parse().ok().filter(|id| *id != 0).ok_or_else(unknown)?;
        match kind {
            "replica" => Ok(Identity::Replica(id)),
            "principal" => Ok(Identity::Principal(id)),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Replica(id) => write!(formatter, "replica {id}"),
            Identity::Principal(id) => write!(formatter, "principal {id}"),
        }
    }
}

/// Why a certificate could not be made or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot make the certificate: {0}")]
    Issue(String),
    #[error("cannot read the certificate: {0}")]
    Unreadable(String),
    #[error("the certificate names no Tally identity (one tally:// URI); it names {uris:?}")]
    NoIdentity { uris: Vec<String> },
    #[error("the certificate belongs to cluster {named}, not to this cluster ({expected})")]
    OtherCluster { named: String, expected: String },
}

fn issue_error(error: rcgen::Error) -> CertError {
    CertError::Issue(error.to_string())
}

/// A certificate and its private key, in PEM, as written to files.
#[derive(Clone)]
pub struct CertifiedKey {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub certificate: CertificateDer<'static>,
    private_key_pkcs8: Vec<u8>,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("CertifiedKey(..)")
    }
}

impl CertifiedKey {
    /// The private key, for a TLS configuration.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.private_key_pkcs8.clone()))
    }
}

/// The CA's ML-DSA-87 key, signing for rcgen through aws-lc-rs. rcgen 0.14.10 generates ML-DSA
/// keys but cannot load one back from its PKCS#8 file (`KeyPair::from_der_and_sign_algo` knows no
/// ML-DSA), and a CA must sign again after a restart: aws-lc-rs loads it.
struct CaKey {
    key_pair: PqdsaKeyPair,
}

impl CaKey {
    fn pkcs8(&self) -> Result<Vec<u8>, CertError> {
        let document = self.key_pair.to_pkcs8v1().map_err(|_| CertError::Issue("cannot encode the CA key".into()))?;
        Ok(document.as_ref().to_vec())
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.key_pair.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ML_DSA_87
    }
}

impl SigningKey for CaKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut signature = vec![0; ML_DSA_87_SIGNING.signature_len()];
        self.key_pair.sign(message, &mut signature).map_err(|_| rcgen::Error::RingUnspecified)?;
        Ok(signature)
    }
}

/// The cluster's certificate authority: its ML-DSA-87 key and the parameters it issues under.
pub struct ClusterCa {
    cluster: ClusterId,
    params: CertificateParams,
    key: CaKey,
    certified: CertifiedKey,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ClusterCa({})", self.cluster)
    }
}

/// The CA's subject: the same for the certificate and for every issuer made from its key, so that
/// each certificate it issues names it.
fn ca_params(cluster: &ClusterId, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tally");
    name.push(DnType::CommonName, format!("Tally cluster {} CA", cluster));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, validity);
    params
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A minute back, so that a peer whose clock is a little behind accepts it at once.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + validity;
}

impl ClusterCa {
    /// A new CA for `cluster`, with a new ML-DSA-87 key.
    pub fn generate(cluster: ClusterId, validity: Duration) -> Result<ClusterCa, CertError> {
        let key_pair = PqdsaKeyPair::generate(&ML_DSA_87_SIGNING)
            .map_err(|_| CertError::Issue("cannot generate the CA key".into()))?;
        let key = CaKey { key_pair };
        let params = ca_params(&cluster, validity);
        let certificate = params.self_signed(&key).map_err(issue_error)?;
        let private_key_pkcs8 = key.pkcs8()?;
        let certified = CertifiedKey {
            certificate_pem: certificate.pem(),
            private_key_pem: pem::encode(&pem::Pem::new("PRIVATE KEY", private_key_pkcs8.clone())),
            certificate: certificate.der().clone(),
            private_key_pkcs8,
        };
        Ok(ClusterCa { cluster, params, key, certified })
    }

    /// The CA from its certificate and key files, as [`ClusterCa::generate`] wrote them.
    pub fn from_pem(cluster: ClusterId, certificate_pem: &str, private_key_pem: &str) -> Result<ClusterCa, CertError> {
        let unreadable = |what: &str, error: String| CertError::Unreadable(format!("the CA's {what}: {error}"));
        let private_key = pem::parse(private_key_pem).map_err(|error| unreadable("key", error.to_string()))?;
        let key_pair = PqdsaKeyPair::from_pkcs8(&ML_DSA_87_SIGNING, private_key.contents())
            .map_err(|error| unreadable("key (an ML-DSA-87 PKCS#8 key)", error.to_string()))?;
        let certificate = rustls_pki_types::pem::PemObject::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|error| unreadable("certificate", error.to_string()))?;
        let key = CaKey { key_pair };
        let certified = CertifiedKey {
            certificate_pem: certificate_pem.to_owned(),
            private_key_pem: private_key_pem.to_owned(),
            certificate,
            private_key_pkcs8: private_key.contents().to_vec(),
        };
        Ok(ClusterCa { cluster, params: ca_params(&cluster, CA_VALIDITY_DEFAULT), key, certified })
    }

    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The CA's own certificate and key.
    pub fn certified(&self) -> &CertifiedKey {
        &self.certified
    }

    /// Issues a certificate for `identity` with a new ML-DSA-65 key. A replica's names the
    /// addresses it serves on (DNS names and IP addresses) and serves both ways (it is a server to
    /// clients and peers, and a client to peers); a principal's is a client certificate only.
    pub fn issue(
        &self,
        identity: Identity,
        addresses: &[String],
        validity: Duration,
    ) -> Result<CertifiedKey, CertError> {
        let now = time::OffsetDateTime::now_utc();
        // A minute back, so that a peer whose clock is a little behind accepts it at once.
        self.issue_valid_between(identity, addresses, now - time::Duration::minutes(1), now + validity)
    }

    /// [`ClusterCa::issue`] with an explicit validity window (tests make expired certificates).
    pub fn issue_valid_between(
        &self,
        identity: Identity,
        addresses: &[String],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<CertifiedKey, CertError> {
        let key = KeyPair::generate_for(&PKCS_ML_DSA_65).map_err(issue_error)?;
        let params = leaf_params(&self.cluster, identity, addresses, not_before, not_after)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        signed(&params, &key, &issuer)
    }
}

/// A leaf certificate's parameters: one `tally://` URI naming `identity`, the addresses a replica
/// serves on, its usages.
fn leaf_params(
    cluster: &ClusterId,
    identity: Identity,
    addresses: &[String],
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tally");
    name.push(DnType::CommonName, identity.to_string());
    params.distinguished_name = name;
    let uri = identity.uri(cluster).try_into().map_err(issue_error)?;
    params.subject_alt_names.push(SanType::URI(uri));
    for address in addresses {
        let name = match address.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(address.clone().try_into().map_err(issue_error)?),
        };
        params.subject_alt_names.push(name);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity {
        Identity::Replica(_) => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Identity::Principal(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn signed(
    params: &CertificateParams,
    key: &KeyPair,
    issuer: &Issuer<'_, impl SigningKey>,
) -> Result<CertifiedKey, CertError> {
    let certificate = params.signed_by(key, issuer).map_err(issue_error)?;
    Ok(CertifiedKey {
        certificate_pem: certificate.pem(),
        private_key_pem: key.serialize_pem(),
        certificate: certificate.der().clone(),
        private_key_pkcs8: key.serialize_der(),
    })
}

/// The cluster's fallback CA: ECDSA P-256, for the clients whose TLS stacks cannot verify ML-DSA
/// certificates yet (OpenSSL 3.0, Go's crypto/tls). Client-facing listeners present its chain to
/// a client that offers no ML-DSA signature scheme; peers never use it (a replica refuses the peer
/// protocol to a certificate that is not ML-DSA). Its certificates name the same identities.
pub struct FallbackCa {
    cluster: ClusterId,
    params: CertificateParams,
    key: KeyPair,
    certified: CertifiedKey,
}

impl fmt::Debug for FallbackCa {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "FallbackCa({})", self.cluster)
    }
}

fn fallback_ca_params(cluster: &ClusterId, validity: Duration) -> CertificateParams {
    let mut params = ca_params(cluster, validity);
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tally");
    name.push(DnType::CommonName, format!("Tally cluster {} fallback CA (ECDSA)", cluster));
    params.distinguished_name = name;
    params
}

impl FallbackCa {
    pub fn generate(cluster: ClusterId, validity: Duration) -> Result<FallbackCa, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_error)?;
        let params = fallback_ca_params(&cluster, validity);
        let certificate = params.self_signed(&key).map_err(issue_error)?;
        let certified = CertifiedKey {
            certificate_pem: certificate.pem(),
            private_key_pem: key.serialize_pem(),
            certificate: certificate.der().clone(),
            private_key_pkcs8: key.serialize_der(),
        };
        Ok(FallbackCa { cluster, params, key, certified })
    }

    pub fn from_pem(cluster: ClusterId, certificate_pem: &str, private_key_pem: &str) -> Result<FallbackCa, CertError> {
        let unreadable =
            |what: &str, error: String| CertError::Unreadable(format!("the fallback CA's {what}: {error}"));
        let key = KeyPair::from_pem(private_key_pem).map_err(|error| unreadable("key", error.to_string()))?;
        let certificate = rustls_pki_types::pem::PemObject::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|error| unreadable("certificate", error.to_string()))?;
        let certified = CertifiedKey {
            certificate_pem: certificate_pem.to_owned(),
            private_key_pem: private_key_pem.to_owned(),
            certificate,
            private_key_pkcs8: key.serialize_der(),
        };
        Ok(FallbackCa { cluster, params: fallback_ca_params(&cluster, CA_VALIDITY_DEFAULT), key, certified })
    }

    pub fn certified(&self) -> &CertifiedKey {
        &self.certified
    }

    /// An ECDSA P-256 certificate for `identity`, as [`ClusterCa::issue`] makes its ML-DSA one.
    pub fn issue(
        &self,
        identity: Identity,
        addresses: &[String],
        validity: Duration,
    ) -> Result<CertifiedKey, CertError> {
        let now = time::OffsetDateTime::now_utc();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_error)?;
        let params = leaf_params(&self.cluster, identity, addresses, now - time::Duration::minutes(1), now + validity)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        signed(&params, &key, &issuer)
    }
}

/// The OID of ML-DSA-65 (FIPS 204) public keys.
const ML_DSA_65_OID: &str = "2.16.840.1.101.3.4.3.18";

/// Whether a certificate's key is ML-DSA-65: what replicas present to each other.
pub fn is_ml_dsa(certificate: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(certificate)
        .map(|(_, parsed)| parsed.public_key().algorithm.algorithm.to_id_string() == ML_DSA_65_OID)
        .unwrap_or(false)
}

/// A revoked certificate, as the CA's revocation list names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The certificate's serial number, big-endian ([`serial_of`]).
    pub serial: Vec<u8>,
    /// When the CA revoked it.
    pub revoked_at: time::OffsetDateTime,
}

/// How long a revocation list is said to hold before the next (replicas read every new one on
/// reload; the date is for other verifiers).
pub const REVOCATION_LIST_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate's serial number, big-endian, as a revocation list names it.
pub fn serial_of(certificate: &CertificateDer<'_>) -> Result<Vec<u8>, CertError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(certificate).map_err(|error| CertError::Unreadable(error.to_string()))?;
    Ok(parsed.raw_serial().to_vec())
}

impl ClusterCa {
    /// The CA's revocation list, number `number` (each new list takes a higher one), naming
    /// `revoked`: PEM, for `ca.crl`.
    pub fn revocation_list(&self, number: u64, revoked: &[Revoked]) -> Result<String, CertError> {
        revocation_list(&Issuer::from_params(&self.params, &self.key), number, revoked)
    }
}

impl FallbackCa {
    /// The fallback CA's revocation list (`ca-ecdsa.crl`), as [`ClusterCa::revocation_list`].
    pub fn revocation_list(&self, number: u64, revoked: &[Revoked]) -> Result<String, CertError> {
        revocation_list(&Issuer::from_params(&self.params, &self.key), number, revoked)
    }
}

fn revocation_list(
    issuer: &Issuer<'_, impl SigningKey>,
    number: u64,
    revoked: &[Revoked],
) -> Result<String, CertError> {
    let now = time::OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + REVOCATION_LIST_VALIDITY,
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|revoked| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&revoked.serial),
                revocation_time: revoked.revoked_at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(issuer).and_then(|list| list.pem()).map_err(issue_error)
}
