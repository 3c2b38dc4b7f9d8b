//! Ed25519 signing keys: generation, a key file that survives restarts, and
//! PKCS#8 v2 input.
//!
//! Why Ed25519 for a service's own tokens: 32-byte keys, fast signing and
//! verification, no parameter choices to get wrong, and EdDSA cannot be
//! confused with an HMAC key by a verifier (the algorithm is bound per key).

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::AlgorithmParameters;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::SigningKey;
use crate::error::{Error, Result};

/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
/// OCTET STRING (32 bytes) } }` up to the seed: the whole PKCS#8 v1 (RFC
/// 8410) encoding of an Ed25519 private key is this header plus the seed.
const V1_HEADER: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

fn pem_of_seed(seed: &[u8; 32]) -> String {
    let mut der = V1_HEADER.to_vec();
    der.extend_from_slice(seed);
    format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(der))
}

/// Returns the PEM unchanged when it is not a PKCS#8 v2 Ed25519 key, and the
/// same key re-encoded as v1 when it is: jsonwebtoken's pure-Rust backend
/// reads only v1, while ring, rcgen and OpenSSL 3 write v2 (RFC 5958: version
/// 1 with the public key appended). The seed sits at the same offset in both.
pub(crate) fn normalize_pem(pem: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(pem)
        .map_err(|e| Error::invalid_key_by("PEM is not UTF-8", e))?
        .to_owned();
    let Some(body) = text
        .split_once(PEM_BEGIN)
        .and_then(|(_, rest)| rest.split_once(PEM_END))
        .map(|(body, _)| body)
    else {
        return Ok(text);
    };
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let Ok(der) = STANDARD.decode(compact) else {
        return Ok(text);
    };
    // v2: SEQUENCE (long or short length), INTEGER 1, the same algorithm
    // identifier and seed wrapper as v1, then [1] the public key.
    let is_v2 = der.len() >= 48 && der[0] == 0x30 && der[2..5] == [0x02, 0x01, 0x01];
    if !is_v2 || der[5..16] != V1_HEADER[5..16] {
        return Ok(text);
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&der[16..48]);
    Ok(pem_of_seed(&seed))
}

/// The RFC 7638 thumbprint of an Ed25519 public key (`x`, base64url):
/// stable for the key, so a key reloaded after a restart keeps its `kid`.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

impl SigningKey {
    /// A new random Ed25519 (EdDSA) key whose `kid` is its RFC 7638
    /// thumbprint. Keep [`SigningKey::private_key_pem`] to use it again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] if the freshly generated key cannot be loaded (a
    /// bug, not an input problem).
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::issue::SigningKey;
    /// let key = SigningKey::generate_ed25519()?;
    /// let again = SigningKey::from_pem(key.kid(), key.algorithm(), key.private_key_pem().unwrap().as_bytes())?;
    /// assert_eq!(key.public_jwk(), again.public_jwk());
    /// # Ok::<_, trellis_auth::Error>(())
    /// ```
    pub fn generate_ed25519() -> Result<Self> {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self::ed25519_from_pem(pem_of_seed(&seed).as_bytes())
    }

    /// Loads the Ed25519 key in `path` (PKCS#8 PEM, v1 or v2), or generates
    /// one and writes it there first (readable by the owner only on Unix),
    /// so tokens signed before a restart still verify after it. The `kid`
    /// is the key's thumbprint.
    ///
    /// A partially written file is never left behind: the key is written
    /// to a temporary file beside `path` and renamed into place.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read, or the new key cannot be
    /// written and renamed into place; [`Error::InvalidKey`] when the file
    /// holds no Ed25519 key (it is left untouched).
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::issue::SigningKey;
    /// let path = std::env::temp_dir().join(format!("doc-signing-{}.pem", std::process::id()));
    /// let first = SigningKey::load_or_generate_ed25519(&path)?;
    /// let second = SigningKey::load_or_generate_ed25519(&path)?;
    /// assert_eq!(first.kid(), second.kid());
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<_, trellis_auth::Error>(())
    /// ```
    pub fn load_or_generate_ed25519(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(pem) => Self::ed25519_from_pem(&pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate_ed25519()?;
                let pem = key.private_key_pem().unwrap_or_default();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&tmp).map_err(io)?;
                file.write_all(pem.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                drop(file);
                // Two processes racing to create the key: the first rename
                // wins and both then use what is on disk.
                if path.exists() {
                    let _ = std::fs::remove_file(&tmp);
                    return Self::ed25519_from_pem(&std::fs::read(path).map_err(io)?);
                }
                std::fs::rename(&tmp, path).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn ed25519_from_pem(pem: &[u8]) -> Result<Self> {
        // Load once under a placeholder kid to learn the public key, then
        // name the key by its thumbprint.
        let probe = Self::from_pem("", Algorithm::EdDSA, pem)?;
        let x = match probe.public_jwk().map(|jwk| &jwk.algorithm) {
            Some(AlgorithmParameters::OctetKeyPair(okp)) => okp.x.clone(),
            _ => return Err(Error::invalid_key("not an Ed25519 key")),
        };
        let pem = probe.private_key_pem().unwrap_or_default().to_owned();
        Self::from_pem(&thumbprint(&x), Algorithm::EdDSA, pem.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The PKCS#8 v2 encoding ring writes for the RFC 8032 test 1 key:
    // the v1 header with version 1, the seed, then [1] the public key.
    fn v2_pem(seed: &[u8; 32], public: &[u8; 32]) -> String {
        let mut der = vec![
            0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(seed);
        der.extend_from_slice(&[0xa1, 0x23, 0x03, 0x21, 0x00]);
        der.extend_from_slice(public);
        format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(der))
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    #[test]
    fn a_v2_key_loads_as_the_same_key_as_its_v1_form() {
        let (seed, public) = (hex32(SEED), hex32(PUBLIC));
        let from_v2 =
            SigningKey::from_pem("k", Algorithm::EdDSA, v2_pem(&seed, &public).as_bytes()).unwrap();
        let from_v1 =
            SigningKey::from_pem("k", Algorithm::EdDSA, pem_of_seed(&seed).as_bytes()).unwrap();
        assert_eq!(from_v2.public_jwk(), from_v1.public_jwk());
        // RFC 8032 test 1: the derived public key is the published one.
        match &from_v2.public_jwk().unwrap().algorithm {
            AlgorithmParameters::OctetKeyPair(okp) => {
                assert_eq!(URL_SAFE_NO_PAD.decode(&okp.x).unwrap(), public)
            }
            other => panic!("not an OKP JWK: {other:?}"),
        }
    }

    #[test]
    fn tokens_of_a_generated_key_verify_and_other_keys_do_not_verify_them() {
        let key = SigningKey::generate_ed25519().unwrap();
        let other = SigningKey::generate_ed25519().unwrap();
        assert_ne!(key.kid(), other.kid(), "random keys differ");
        let claims = serde_json::json!({"sub": "ada", "exp": 4_000_000_000u64});
        let token = key.sign(&claims).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        let decode = |k: &SigningKey| {
            let vk = k.verification_key().unwrap();
            jsonwebtoken::decode::<serde_json::Value>(&token, vk.decoding_key(), &validation)
        };
        assert_eq!(decode(&key).unwrap().claims["sub"], "ada");
        assert!(decode(&other).is_err());
    }

    #[test]
    fn a_key_file_is_created_once_and_reloaded_with_the_same_kid() {
        let dir = std::env::temp_dir().join(format!("trellis-ed25519-{}", std::process::id()));
        let path = dir.join("nested").join("signing.pem");
        let first = SigningKey::load_or_generate_ed25519(&path).unwrap();
        let second = SigningKey::load_or_generate_ed25519(&path).unwrap();
        assert_eq!(first.kid(), second.kid());
        assert_eq!(first.public_jwk(), second.public_jwk());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key file is private: {mode:o}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = std::env::temp_dir().join(format!("trellis-ed25519-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("signing.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = SigningKey::load_or_generate_ed25519(&path).unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
        // The file is left as it was for the operator to look at.
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("not base64")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
