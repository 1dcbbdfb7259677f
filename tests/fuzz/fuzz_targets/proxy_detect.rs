//! The proxy's first-bytes decisions on an arbitrary prefix: protocol detection on outbound
//! connections (`weft_proxy::detect::classify`) and the inbound ClientHello sniff that tells
//! mesh peers from other clients (`weft_proxy::detect::opener_of`). Neither may panic; each
//! decision must agree with the bytes it was made on, and a prefix is undecided only while it
//! is shorter than the bound (16 KiB) past which the sniff gives up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::detect::{Detected, Opener, classify, opener_of};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        Some(Detected::Http2) => assert!(data.starts_with(H2_PREFACE)),
        Some(Detected::Http1) => {
            assert!(data.first().is_some_and(u8::is_ascii_uppercase));
            assert!(data.windows(2).any(|w| w == b"\r\n"));
        }
        Some(Detected::Opaque) => {}
        None => assert!(data.len() < H2_PREFACE.len() || !data.contains(&b'\n')),
    }
    match opener_of(data) {
        Some(Opener::Plaintext) => assert!(data.first().is_some_and(|b| *b != 0x16)),
        Some(Opener::MeshPeer) => {
            assert_eq!(data.first(), Some(&0x16));
            // A mesh peer offers a mesh ALPN protocol, so its name is in the hello.
            assert!(data.windows(5).any(|w| w == b"weft."));
        }
        Some(Opener::OtherTls) => assert_eq!(data.first(), Some(&0x16)),
        None => assert!(data.is_empty() || (data[0] == 0x16 && data.len() < 16 * 1024)),
    }
});
