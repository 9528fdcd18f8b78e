//! jsonwebtoken's signature checks on ring, the crypto library the
//! gateway already ships for TLS. jsonwebtoken (12) leaves the backend to
//! its user; its own choices are RustCrypto (ES256 measured here at about
//! 3,300 checks/s on one core: a fifth of ring's, and four more crates in
//! the build) or aws-lc (a C build). The gateway only verifies, so only
//! the verifiers are here; signing is refused.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::{hmac, signature as sig};

/// How one algorithm checks a signature with a key.
enum Check {
    Hmac(hmac::Algorithm),
    Public(&'static dyn sig::VerificationAlgorithm),
    Rsa(&'static sig::RsaParameters),
}

/// A key and the check of one algorithm.
struct RingVerifier {
    alg: Algorithm,
    check: Check,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let bad = |_| signature::Error::new();
        match (&self.check, self.key.kind()) {
            (Check::Hmac(alg), DecodingKeyKind::SecretOrDer(secret)) => {
                // Constant time, by ring.
                hmac::verify(&hmac::Key::new(*alg, secret), msg, signature).map_err(bad)
            }
            (Check::Public(alg), DecodingKeyKind::SecretOrDer(public)) => {
                sig::UnparsedPublicKey::new(*alg, public)
                    .verify(msg, signature)
                    .map_err(bad)
            }
            (Check::Rsa(alg), DecodingKeyKind::SecretOrDer(der)) => {
                sig::UnparsedPublicKey::new(*alg, der)
                    .verify(msg, signature)
                    .map_err(bad)
            }
            (Check::Rsa(alg), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                sig::RsaPublicKeyComponents { n, e }
                    .verify(alg, msg, signature)
                    .map_err(bad)
            }
            _ => Err(signature::Error::new()),
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let check = match alg {
        Algorithm::HS256 => Check::Hmac(hmac::HMAC_SHA256),
        Algorithm::HS384 => Check::Hmac(hmac::HMAC_SHA384),
        Algorithm::HS512 => Check::Hmac(hmac::HMAC_SHA512),
        Algorithm::ES256 => Check::Public(&sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Check::Public(&sig::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Check::Public(&sig::ED25519),
        Algorithm::RS256 => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA512),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    // A key only checks its own family: an RSA public key can never be
    // an HMAC secret (algorithm confusion).
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        check,
        key: key.clone(),
    }))
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(ErrorKind::UnsupportedAlgorithm.into())
}

static RING: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes ring jsonwebtoken's backend for this process (before any token
/// is checked: every JWT config's compile calls it).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = RING.install_default();
    });
}
