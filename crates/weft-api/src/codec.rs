//! The codec of every Weft API call: prost messages, as tonic's own prost codec encodes them,
//! with smaller buffers.
//!
//! Tonic gives each call an 8 KiB buffer each way and keeps it for the call's life. A
//! `Discovery.Resolve` or `Proxy` stream lives as long as its proxy, and a control plane holds
//! tens of thousands of them (a proxy holds one per service it talks to), while their messages
//! are mostly a few hundred bytes. A call here starts with [`BUFFER_SIZE`]; a larger message
//! grows its buffer as far as it needs.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The buffer each call starts with, each way.
pub const BUFFER_SIZE: usize = 1024;
/// How much a stream encodes before handing it to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost messages with [`BUFFER_SIZE`] buffers; the generated clients and servers use it.
#[derive(Debug)]
pub struct WeftCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WeftCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for WeftCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
