//! systemd's readiness protocol (`sd_notify(3)`) without libsystemd: one datagram of
//! newline-separated `KEY=VALUE` assignments to the `AF_UNIX` socket named by
//! `NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`). Nothing set:
//! nothing sent. A notification that cannot be sent is logged at warn and otherwise
//! ignored: the server serves either way, and a supervisor that waits for `READY=1`
//! reports the failure on its side.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to send notifications, from `NOTIFY_SOCKET`.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for the warnings.
    name: String,
}

impl Notifier {
    /// `None` when `NOTIFY_SOCKET` is unset or empty (not started by systemd with
    /// `Type=notify`), or when it names no socket we can send to (warned).
    pub fn from_env() -> Option<Notifier> {
        let var = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty())?;
        let name = var.to_string_lossy().into_owned();
        match Self::open(var.as_bytes()) {
            Ok((socket, addr)) => Some(Notifier { socket, addr, name }),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={name}: {e}; systemd will not be told we are ready");
                None
            }
        }
    }

    fn open(var: &[u8]) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        let addr = match var {
            [b'@', name @ ..] => abstract_addr(name)?,
            [b'/', ..] => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(var))?,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not an absolute path or an @abstract name",
                ))
            }
        };
        Ok((UnixDatagram::unbound()?, addr))
    }

    /// Sends `state` (e.g. `READY=1`) as one datagram; a failure is a warning.
    pub fn send(&self, state: &str) {
        match self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            Ok(_) => log::debug!("notified {}: {state:?}", self.name),
            Err(e) => log::warn!("cannot notify {} of {state:?}: {e}", self.name),
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket names need Linux",
    ))
}
