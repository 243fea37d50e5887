//! Model bundles: the one file the host sends a device when it pushes a model.
//!
//! A bundle holds the ONNX bytes, the manifest JSON exactly as signed, an ed25519
//! signature over that manifest and the signer's public key. The manifest carries the
//! SHA-256 of the ONNX bytes, so the signature covers the model through it.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `FDETBNDL` |
//! | 1 | format version, [`FORMAT_VERSION`] |
//! | 32 | signer public key |
//! | 64 | signature over [`SIGNING_CONTEXT`] followed by the manifest bytes |
//! | 4 | manifest length `m` (at most [`MAX_MANIFEST_BYTES`]) |
//! | m | manifest JSON |
//! | 8 | model length `n` (at most [`MAX_MODEL_BYTES`]) |
//! | n | ONNX bytes |
//!
//! Nothing may follow the model. [`Bundle::parse`] reads untrusted bytes from the network
//! and returns an error, never a panic, for anything malformed; [`Bundle::verify`] then
//! decides whether the device may trust it.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::manifest::{ManifestError, ModelManifest};

/// First bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"FDETBNDL";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Prefixed to the manifest before signing, so a signature made for something else with
/// the same key can never pass as a model signature.
pub const SIGNING_CONTEXT: &[u8] = b"fdet model manifest v1\n";
/// Largest manifest accepted; real ones are about 1 KB.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest model accepted; the fp32 detector is about 20 MB.
pub const MAX_MODEL_BYTES: usize = 256 * 1024 * 1024;

const HEADER_BYTES: usize = 8 + 1 + 32 + 64;

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bytes end before a field does.
    #[error("bundle is truncated: it ends inside the {0}; resend the whole file")]
    Truncated(&'static str),
    /// The bytes do not start with the bundle magic.
    #[error("not a model bundle (bad magic); send a file made by `host push`")]
    BadMagic,
    /// A layout version this build does not know.
    #[error("bundle format version {0} is not supported (this device reads version 1)")]
    UnsupportedFormat(u8),
    /// A length field is over its limit.
    #[error("bundle {what} is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its declared length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Bytes follow the model.
    #[error("bundle has {0} unexpected bytes after the model")]
    TrailingBytes(usize),
    /// The manifest is not valid UTF-8 JSON of the expected shape.
    #[error("bundle manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The signer field is not a valid ed25519 public key.
    #[error("bundle signer key is not a valid ed25519 public key")]
    BadKey,
    /// The signer is not in the device's trusted keys.
    #[error("bundle is signed by key {0}, which this device does not trust")]
    UntrustedKey(String),
    /// The signature does not match the manifest and key.
    #[error("bundle signature does not verify against its manifest")]
    BadSignature,
}

/// A parsed model bundle. Parsing checks the layout only; call [`Bundle::verify`].
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The manifest exactly as signed.
    pub manifest_json: Vec<u8>,
    /// The manifest, parsed from `manifest_json`.
    pub manifest: ModelManifest,
    /// Signature over [`SIGNING_CONTEXT`] + `manifest_json`.
    pub signature: [u8; 64],
    /// The signer's ed25519 public key.
    pub signer: [u8; 32],
    /// The ONNX model.
    pub onnx: Vec<u8>,
}

impl Bundle {
    /// Signs `manifest_json` with `key` and wraps it with the model.
    ///
    /// The manifest must parse and its hash must match `onnx`, so a host cannot sign a
    /// bundle every device would refuse.
    pub fn sign(
        manifest_json: Vec<u8>,
        onnx: Vec<u8>,
        key: &SigningKey,
    ) -> Result<Self, BundleError> {
        let manifest = ModelManifest::from_json(&manifest_json)?;
        manifest.verify_model(&onnx)?;
        let signature = key.sign(&signed_message(&manifest_json)).to_bytes();
        let signer = key.verifying_key().to_bytes();
        Ok(Self { manifest_json, manifest, signature, signer, onnx })
    }

    /// The bundle's bytes, in the layout described in the module docs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let total = HEADER_BYTES + 4 + self.manifest_json.len() + 8 + self.onnx.len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&(self.manifest_json.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.manifest_json);
        out.extend_from_slice(&(self.onnx.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.onnx);
        out
    }

    /// Reads a bundle from untrusted bytes. Checks layout, limits and the manifest's
    /// shape; not the signature or the hash.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let mut r = Reader { rest: bytes };
        if r.take(MAGIC.len(), "magic")? != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let format = r.take(1, "format version")?[0];
        if format != FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat(format));
        }
        let signer = r.array::<32>("signer key")?;
        let signature = r.array::<64>("signature")?;
        let manifest_len = u32::from_le_bytes(r.array::<4>("manifest length")?);
        let manifest_len = checked_len("manifest", manifest_len.into(), MAX_MANIFEST_BYTES)?;
        let manifest_json = r.take(manifest_len, "manifest")?.to_vec();
        let model_len = u64::from_le_bytes(r.array::<8>("model length")?);
        let model_len = checked_len("model", model_len, MAX_MODEL_BYTES)?;
        let onnx = r.take(model_len, "model")?.to_vec();
        if !r.rest.is_empty() {
            return Err(BundleError::TrailingBytes(r.rest.len()));
        }
        let manifest = ModelManifest::from_json(&manifest_json)?;
        Ok(Self { manifest_json, manifest, signature, signer, onnx })
    }

    /// Checks that the signer is one of `trusted`, that the signature holds, and that the
    /// model is the one the manifest names. Checked in that order, so an untrusted key is
    /// reported as such even when its signature is also bad.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<(), BundleError> {
        let signer = VerifyingKey::from_bytes(&self.signer).map_err(|_| BundleError::BadKey)?;
        if !trusted.contains(&signer) {
            return Err(BundleError::UntrustedKey(hex::encode(self.signer)));
        }
        let signature = Signature::from_bytes(&self.signature);
        signer
            .verify_strict(&signed_message(&self.manifest_json), &signature)
            .map_err(|_| BundleError::BadSignature)?;
        self.manifest.verify_model(&self.onnx)?;
        Ok(())
    }

    /// The signer's key as lowercase hex, the form device configs list.
    pub fn signer_hex(&self) -> String {
        hex::encode(self.signer)
    }
}

/// Why a key in text form could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex digits.
    #[error("key {0:?} is not 64 hex digits (32 bytes)")]
    Format(String),
    /// 32 bytes, but not a point on the curve.
    #[error("key {0} is not a valid ed25519 public key")]
    NotAKey(String),
}

/// Reads a public key written as 64 hex digits (surrounding whitespace ignored).
pub fn public_key_from_hex(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = hex32(text)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotAKey(text.trim().to_string()))
}

/// Reads a private key (the 32-byte seed) written as 64 hex digits.
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, KeyError> {
    // The error must not echo a private key, even a malformed one.
    let bytes = hex32(text).map_err(|_| KeyError::Format("<private key>".into()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

fn hex32(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| KeyError::Format(text.to_string()))?;
    Ok(out)
}

fn signed_message(manifest_json: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, manifest_json].concat()
}

fn checked_len(what: &'static str, len: u64, max: usize) -> Result<usize, BundleError> {
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(BundleError::TooLarge { what, len, max }),
    }
}

/// A cursor over untrusted bytes whose reads fail instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BundleError> {
        if self.rest.len() < n {
            return Err(BundleError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BundleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{sha256_hex, InputSpec, Precision, TrainingInfo};
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest_json(onnx: &[u8], version_number: u64) -> Vec<u8> {
        ModelManifest {
            version: format!("test-{version_number}"),
            version_number,
            file: "model.onnx".into(),
            sha256: sha256_hex(onnx),
            precision: Precision::Fp32,
            input: InputSpec::default(),
            threshold: 0.5,
            training: TrainingInfo::default(),
            metrics: Default::default(),
            created: "2026-12-03T00:00:00Z".into(),
        }
        .to_json()
    }

    fn bundle(onnx: &[u8]) -> Bundle {
        Bundle::sign(manifest_json(onnx, 3), onnx.to_vec(), &key(1)).unwrap()
    }

    #[test]
    fn round_trip_then_verify() {
        let b = bundle(b"onnx bytes");
        let back = Bundle::parse(&b.to_bytes()).unwrap();
        assert_eq!(back.manifest.version_number, 3);
        assert_eq!(back.onnx, b"onnx bytes");
        back.verify(&[key(1).verifying_key()]).unwrap();
    }

    #[test]
    fn untrusted_key_is_named() {
        let b = bundle(b"m");
        let err = b.verify(&[key(2).verifying_key()]).unwrap_err();
        assert!(matches!(err, BundleError::UntrustedKey(_)), "{err}");
        assert!(err.to_string().contains(&b.signer_hex()), "{err}");
    }

    #[test]
    fn tampered_manifest_fails_the_signature() {
        let b = bundle(b"m");
        let mut bytes = b.to_bytes();
        // Change the version number's text inside the signed manifest JSON.
        let at = HEADER_BYTES + 4 + find(&b.manifest_json, b"\"version_number\": 3").unwrap();
        let digit = at + "\"version_number\": ".len();
        bytes[digit] = b'9';
        let back = Bundle::parse(&bytes).unwrap();
        assert_eq!(back.manifest.version_number, 9);
        assert!(matches!(back.verify(&[key(1).verifying_key()]), Err(BundleError::BadSignature)));
    }

    #[test]
    fn corrupt_model_fails_the_hash() {
        let b = bundle(b"model bytes");
        let mut bytes = b.to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let back = Bundle::parse(&bytes).unwrap();
        let err = back.verify(&[key(1).verifying_key()]).unwrap_err();
        assert!(matches!(err, BundleError::Manifest(ManifestError::HashMismatch { .. })), "{err}");
    }

    #[test]
    fn sign_refuses_a_manifest_for_other_bytes() {
        let err = Bundle::sign(manifest_json(b"a", 1), b"b".to_vec(), &key(1)).unwrap_err();
        assert!(matches!(err, BundleError::Manifest(ManifestError::HashMismatch { .. })));
    }

    #[test]
    fn layout_errors() {
        let bytes = bundle(b"m").to_bytes();
        assert!(matches!(Bundle::parse(b"NOTABNDL........"), Err(BundleError::BadMagic)));
        assert!(matches!(Bundle::parse(&bytes[..20]), Err(BundleError::Truncated("signer key"))));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Bundle::parse(&longer), Err(BundleError::TrailingBytes(1))));
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert!(matches!(Bundle::parse(&v2), Err(BundleError::UnsupportedFormat(2))));
        let mut huge = bytes;
        huge[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Bundle::parse(&huge),
            Err(BundleError::TooLarge { what: "manifest", .. })
        ));
    }

    #[test]
    fn keys_from_hex() {
        let k = key(7);
        let public =
            public_key_from_hex(&format!(" {}\n", hex::encode(k.verifying_key().to_bytes())));
        assert_eq!(public.unwrap(), k.verifying_key());
        let private = signing_key_from_hex(&hex::encode(k.to_bytes())).unwrap();
        assert_eq!(private.verifying_key(), k.verifying_key());
        assert!(matches!(public_key_from_hex("abc"), Err(KeyError::Format(_))));
        let err = signing_key_from_hex("zz").unwrap_err().to_string();
        assert!(!err.contains("zz"), "{err}");
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_on_random_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = Bundle::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_random_tails(
            tail in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.push(FORMAT_VERSION);
            bytes.extend_from_slice(&tail);
            let _ = Bundle::parse(&bytes);
        }

        #[test]
        fn mutated_bundles_never_panic_and_never_verify_when_signed_parts_change(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let good = bundle(b"some onnx model bytes");
            let mut bytes = good.to_bytes();
            for (at, mask) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            let unchanged = bytes == good.to_bytes();
            if let (Ok(b), false) = (Bundle::parse(&bytes), unchanged) {
                // A flipped byte anywhere in key, signature, manifest or model must break
                // verification; flips in the length fields fail to parse instead.
                prop_assert!(b.verify(&[key(1).verifying_key()]).is_err());
            }
        }
    }
}
