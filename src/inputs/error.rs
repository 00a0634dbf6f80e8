//! How one Modbus request can fail below the Modbus exception, shared by the client framings.
//!
//! Keeps tokio-modbus's two layers apart (`Result<Result<T, ExceptionCode>, Error>`): the outer
//! error is the link's (transport, closed, protocol), the inner one the device's exception code.

use std::io;

/// What can go wrong with one request, below the Modbus exception.
#[derive(Debug)]
pub enum LinkError {
    /// The connection or port failed.
    Transport(io::Error),
    /// The device closed the connection (EOF, reset): some close after every reply, so the
    /// link re-opens and asks once more before this counts as a failure.
    Closed,
    /// A reply that is not the answer to this request (unit id, function code, framing).
    Protocol(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Transport(e) => write!(f, "transport: {e}"),
            LinkError::Closed => f.write_str("connection closed by the device"),
            LinkError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

/// A transport error with a reason a person can read: a connection the peer closed says so,
/// instead of the "Success (os error 0)" an EOF can turn into.
pub fn transport_error(e: io::Error) -> LinkError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => LinkError::Closed,
        _ if e.raw_os_error() == Some(0) => LinkError::Closed,
        _ => LinkError::Transport(e),
    }
}

/// Outer: link error. Inner: Modbus exception code.
pub type ModbusResult<T> = Result<Result<T, u8>, LinkError>;
