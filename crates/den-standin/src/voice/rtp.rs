//! What arrives on the voice UDP socket: IP discovery requests and RTP
//! packets under the `aead_aes256_gcm_rtpsize` transport encryption.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

/// The one transport encryption mode the stand-in offers.
pub(crate) const MODE: &str = "aead_aes256_gcm_rtpsize";
/// An IP discovery packet: type, length, SSRC, 64-byte address, port.
pub(crate) const DISCOVERY_LEN: usize = 74;
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 4;

/// The SSRC of an IP discovery request.
pub(crate) fn discovery_request(packet: &[u8]) -> Option<u32> {
    (packet.len() == DISCOVERY_LEN && packet[..2] == [0, 1])
        .then(|| u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]))
}

/// The answer to a discovery request: the address and port the packet came from.
pub(crate) fn discovery_response(ssrc: u32, from: std::net::SocketAddr) -> [u8; DISCOVERY_LEN] {
    let mut out = [0u8; DISCOVERY_LEN];
    out[..2].copy_from_slice(&2u16.to_be_bytes());
    out[2..4].copy_from_slice(&70u16.to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let ip = from.ip().to_string();
    out[8..8 + ip.len()].copy_from_slice(ip.as_bytes());
    out[72..74].copy_from_slice(&from.port().to_be_bytes());
    out
}

/// One RTP packet, decrypted.
#[derive(Debug)]
pub(crate) struct RtpPacket {
    pub seq: u16,
    pub timestamp: u32,
    /// The Opus frame.
    pub payload: Vec<u8>,
}

/// Why a packet was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RtpError {
    /// Not RTP version 2 or too short.
    Malformed,
    /// The tag did not verify with the session's key.
    Forged,
}

/// The SSRC of an RTP packet, read before decryption to find its session.
pub(crate) fn ssrc_of(packet: &[u8]) -> Option<u32> {
    (packet.len() >= 12 && packet[0] >> 6 == 2)
        .then(|| u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]))
}

/// Decrypts an `rtpsize` AEAD packet: the header (and the 4-byte extension
/// preamble, when the X bit is set) is authenticated in the clear; the
/// extension body and the payload are encrypted; the tag and then a 4-byte
/// nonce counter end the packet.
pub(crate) fn decrypt(key: &[u8; 32], packet: &[u8]) -> Result<RtpPacket, RtpError> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return Err(RtpError::Malformed);
    }
    let csrcs = usize::from(packet[0] & 0x0f);
    let extension = packet[0] & 0x10 != 0;
    let clear = 12 + 4 * csrcs + if extension { 4 } else { 0 };
    if packet.len() < clear + TAG_LEN + NONCE_LEN {
        return Err(RtpError::Malformed);
    }
    let (body, nonce_bytes) = packet.split_at(packet.len() - NONCE_LEN);
    let (sealed, tag) = body.split_at(body.len() - TAG_LEN);
    let (aad, ciphertext) = sealed.split_at(clear);
    let mut nonce = [0u8; 12];
    nonce[..NONCE_LEN].copy_from_slice(nonce_bytes);
    let cipher = Aes256Gcm::new(key.into());
    let mut plain = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut plain, Tag::from_slice(tag))
        .map_err(|_| RtpError::Forged)?;
    let skip = if extension {
        // The preamble's second half counts the extension's 32-bit words.
        4 * usize::from(u16::from_be_bytes([packet[clear - 2], packet[clear - 1]]))
    } else {
        0
    };
    let payload = plain.get(skip..).ok_or(RtpError::Malformed)?.to_vec();
    Ok(RtpPacket {
        seq: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &[u8; 32], header: &[u8], payload: &[u8], counter: u32) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&counter.to_be_bytes());
        let mut body = payload.to_vec();
        let tag =
            Aes256Gcm::new(key.into()).encrypt_in_place_detached(Nonce::from_slice(&nonce), header, &mut body).unwrap();
        [header, &body, tag.as_slice(), &counter.to_be_bytes()].concat()
    }

    #[test]
    fn a_sealed_packet_opens_and_a_tampered_one_is_refused() {
        let key = [7u8; 32];
        let header = [0x80, 0x78, 0, 5, 0, 0, 3, 0xc0, 0, 0, 0, 42];
        let mut packet = seal(&key, &header, b"opus frame", 9);
        let p = decrypt(&key, &packet).unwrap();
        assert_eq!((p.seq, p.timestamp, p.payload.as_slice()), (5, 960, &b"opus frame"[..]));
        assert_eq!(ssrc_of(&packet), Some(42));
        packet[14] ^= 1;
        assert_eq!(decrypt(&key, &packet).unwrap_err(), RtpError::Forged);
        assert_eq!(decrypt(&key, &packet[..20]).unwrap_err(), RtpError::Malformed);
    }

    #[test]
    fn an_encrypted_extension_body_is_skipped() {
        let key = [1u8; 32];
        let header = [0x90, 0x78, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0xbe, 0xde, 0, 1];
        let packet = seal(&key, &header, &[1, 2, 3, 4, b'x', b'y'], 0);
        assert_eq!(decrypt(&key, &packet).unwrap().payload, b"xy");
    }

    #[test]
    fn discovery_is_answered_with_the_senders_address() {
        let mut req = [0u8; DISCOVERY_LEN];
        req[..2].copy_from_slice(&[0, 1]);
        req[4..8].copy_from_slice(&99u32.to_be_bytes());
        assert_eq!(discovery_request(&req), Some(99));
        let out = discovery_response(99, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(&out[8..17], b"127.0.0.1");
        assert_eq!(u16::from_be_bytes([out[72], out[73]]), 5000);
    }
}
