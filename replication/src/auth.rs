//! Shared-secret authentication: HMAC-SHA256 challenge-response.
//!
//! Owns: what exactly is MACed and the constant-time check. Must never:
//! generate nonces (they come in from the caller's RNG) or log secrets.
//! The MAC binds the challenger's nonce, both node ids in a fixed
//! responder/challenger order (so a challenge reflected back at its sender
//! does not verify) and the resource name.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{MAC_BYTES, NONCE_BYTES};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation so these MACs are never valid anywhere else.
const DOMAIN: &[u8] = b"drbdd-auth-v1";

fn mac_for(
    secret: &[u8],
    nonce: &[u8; NONCE_BYTES],
    responder: u8,
    challenger: u8,
    resource: &str,
) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(DOMAIN);
    mac.update(nonce);
    mac.update(&[responder, challenger]);
    let len = u16::try_from(resource.len()).unwrap_or(u16::MAX);
    mac.update(&len.to_be_bytes());
    mac.update(resource.as_bytes());
    mac
}

/// The response `responder` sends to prove it knows `secret`, answering the
/// challenge `nonce` that `challenger` sent.
pub fn auth_response(
    secret: &[u8],
    nonce: &[u8; NONCE_BYTES],
    responder: u8,
    challenger: u8,
    resource: &str,
) -> [u8; MAC_BYTES] {
    let bytes = mac_for(secret, nonce, responder, challenger, resource)
        .finalize()
        .into_bytes();
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&bytes);
    out
}

/// Checks a response in constant time.
pub fn verify_response(
    secret: &[u8],
    nonce: &[u8; NONCE_BYTES],
    responder: u8,
    challenger: u8,
    resource: &str,
    response: &[u8],
) -> bool {
    mac_for(secret, nonce, responder, challenger, resource)
        .verify_slice(response)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 32] = [7; 32];

    #[test]
    fn response_with_the_same_secret_verifies() {
        let mac = auth_response(b"s3cret", &NONCE, 1, 0, "r0");
        assert!(verify_response(b"s3cret", &NONCE, 1, 0, "r0", &mac));
    }

    #[test]
    fn response_with_a_different_secret_is_rejected() {
        let mac = auth_response(b"wrong", &NONCE, 1, 0, "r0");
        assert!(!verify_response(b"s3cret", &NONCE, 1, 0, "r0", &mac));
    }

    #[test]
    fn reflected_response_is_rejected() {
        // The challenger answering its own challenge swaps the node-id order.
        let mac = auth_response(b"s3cret", &NONCE, 0, 1, "r0");
        assert!(!verify_response(b"s3cret", &NONCE, 1, 0, "r0", &mac));
    }

    #[test]
    fn response_for_another_resource_or_nonce_is_rejected() {
        let mac = auth_response(b"s3cret", &NONCE, 1, 0, "r1");
        assert!(!verify_response(b"s3cret", &NONCE, 1, 0, "r0", &mac));
        let mac = auth_response(b"s3cret", &[8; 32], 1, 0, "r0");
        assert!(!verify_response(b"s3cret", &NONCE, 1, 0, "r0", &mac));
    }
}
