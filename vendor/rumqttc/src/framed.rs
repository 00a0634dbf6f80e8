use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::mqttbytes::{self, v4::*};
use crate::{Incoming, MqttState, StateError};

/// fieldgate patch: how many encoded bytes `write` buffers before it writes them to the socket.
/// tokio-util's default (8 KiB) cut a batch of 256 small publishes (`MAX_REQUEST_BATCH`) into
/// four or five `writev` calls; above this size a batch still goes out before the flush.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Network transforms packets <-> frames efficiently. It takes
/// advantage of pre-allocation, buffering and vectorization when
/// appropriate to achieve performance
pub struct Network {
    /// Frame MQTT packets from network connection
    framed: Framed<Box<dyn AsyncReadWrite>, Codec>,
    /// Maximum readv count (fieldgate patch: set by `EventLoop::read_batch`)
    pub(crate) max_readb_count: usize,
    /// fieldgate patch: the plain TCP socket's descriptor (for `SO_RCVLOWAT`), when known.
    #[cfg(unix)]
    pub(crate) raw_fd: Option<std::os::fd::RawFd>,
    /// fieldgate patch: whether the last `readb` ended because nothing more was ready (the
    /// socket drained, at most a partial packet left in the read buffer) or with the buffer
    /// empty, rather than at `max_readb_count` with packets left; only then does the next
    /// `readb` wait on the socket.
    pub(crate) drained: bool,
}

impl Network {
    pub fn new(
        socket: impl AsyncReadWrite + 'static,
        max_incoming_size: usize,
        max_outgoing_size: usize,
    ) -> Network {
        let socket = Box::new(socket) as Box<dyn AsyncReadWrite>;
        let codec = Codec {
            max_incoming_size,
            max_outgoing_size,
        };
        let mut framed = Framed::new(socket, codec);
        // fieldgate patch: flush a written batch in one system call, not every 8 KiB.
        framed.set_backpressure_boundary(WRITE_BATCH_BYTES);

        Network {
            framed,
            max_readb_count: 10,
            #[cfg(unix)]
            raw_fd: None,
            drained: true,
        }
    }

    /// Reads and returns a single packet from network
    pub async fn read(&mut self) -> Result<Incoming, StateError> {
        match self.framed.next().await {
            Some(Ok(packet)) => Ok(packet),
            Some(Err(mqttbytes::Error::InsufficientBytes(_))) => unreachable!(),
            Some(Err(e)) => Err(StateError::Deserialization(e)),
            None => Err(StateError::ConnectionAborted),
        }
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub async fn readb(&mut self, state: &mut MqttState) -> Result<(), StateError> {
        // wait for the first read
        let mut res = self.framed.next().await;
        let mut count = 1;
        self.drained = false;
        loop {
            match res {
                Some(Ok(packet)) => {
                    if let Some(outgoing) = state.handle_incoming_packet_unstamped(packet)? {
                        self.write(outgoing).await?;
                    }

                    count += 1;
                    if count >= self.max_readb_count {
                        break;
                    }
                }
                Some(Err(mqttbytes::Error::InsufficientBytes(_))) => unreachable!(),
                Some(Err(e)) => return Err(StateError::Deserialization(e)),
                None => return Err(StateError::ConnectionAborted),
            }
            // do not wait for subsequent reads
            match self.framed.next().now_or_never() {
                Some(r) => res = r,
                _ => {
                    self.drained = true;
                    break;
                }
            };
        }
        // fieldgate patch: one clock read for the packets read together. A read that stopped at
        // the count with nothing left in the buffer drained it too.
        state.stamp_incoming();
        if self.framed.read_buffer().is_empty() {
            self.drained = true;
        }

        Ok(())
    }

    /// Serializes packet into write buffer
    /// fieldgate patch: the bytes read from the socket and not yet decoded (after a drained
    /// `readb`, the start of a packet still arriving).
    pub(crate) fn read_buffered(&self) -> usize {
        self.framed.read_buffer().len()
    }

    pub async fn write(&mut self, packet: Packet) -> Result<(), StateError> {
        self.framed
            .feed(packet)
            .await
            .map_err(StateError::Deserialization)
    }

    pub async fn flush(&mut self) -> Result<(), crate::state::StateError> {
        self.framed
            .flush()
            .await
            .map_err(StateError::Deserialization)
    }
}

pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T> AsyncReadWrite for T where T: AsyncRead + AsyncWrite + Send + Unpin {}
