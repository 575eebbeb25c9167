//! One client connection's own bounds, below HTTP: how long it may take to
//! send a request head, how long it may sit idle between requests, and how
//! long a write to it may stall (a client that stops reading). Each is
//! enforced on the socket itself, so it holds for HTTP/1 and HTTP/2 alike and
//! for connections that never get as far as a request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::instance::BodyWatch;

mod framing;

/// The timeouts every connection of the application listener gets.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// From the first byte of a request head to its end.
    pub header_read: Duration,
    /// With no request in flight and no byte of a new one.
    pub idle: Duration,
    /// A write that makes no progress.
    pub write: Duration,
}

/// What the socket guard and the request path share about one connection.
#[derive(Default)]
pub struct ConnShared {
    /// Requests whose response head is not yet given.
    pub active: AtomicUsize,
    /// Response bodies still being sent, with their deadlines.
    pub bodies: Arc<BodyWatch>,
    /// The host is shutting down: an idle connection closes at once.
    pub draining: AtomicBool,
}

impl ConnShared {
    /// Whether a request of this connection is being served or answered.
    pub fn busy(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0 || self.bodies.sending() > 0
    }
}

/// Counts a request as active from its start until its response head.
pub struct Active<'a>(&'a ConnShared);

impl<'a> Active<'a> {
    pub fn new(shared: &'a ConnShared) -> Self {
        shared.active.fetch_add(1, Ordering::AcqRel);
        Active(shared)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which read bound applies while nothing is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Not waiting: a request is in flight.
    Busy,
    /// No byte of a new request yet.
    Idle,
    /// Part of a request head has arrived.
    Head,
}

/// A TCP stream with the connection's read and write bounds. Past one, a read
/// ends the stream (the connection closes as if the client had) and a write
/// fails with `TimedOut`.
pub struct GuardedStream {
    io: TcpStream,
    shared: Arc<ConnShared>,
    limits: ConnLimits,
    waiting: Waiting,
    /// HTTP/2 (seen from the preface): its frames between requests (pings,
    /// settings) are not a request head, so only the idle bound applies.
    h2: Option<bool>,
    framing: framing::Framing,
    /// The rest of [`framing::REFUSAL`] still to give the parser, once a
    /// head was found with a bare LF; after it the stream ends.
    refusal: Option<&'static [u8]>,
    read_timer: Option<(Instant, Pin<Box<Sleep>>)>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl GuardedStream {
    pub fn new(io: TcpStream, shared: Arc<ConnShared>, limits: ConnLimits) -> Self {
        GuardedStream {
            io,
            shared,
            limits,
            waiting: Waiting::Idle,
            h2: None,
            framing: framing::Framing::default(),
            refusal: None,
            read_timer: None,
            write_timer: None,
        }
    }

    /// Arms (or keeps) the read timer for `deadline`; `true` once it passed.
    fn read_timer_passed(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        match &mut self.read_timer {
            Some((at, timer)) if *at == deadline => timer.as_mut().poll(cx).is_ready(),
            _ => {
                let mut timer = Box::pin(tokio::time::sleep_until(deadline));
                let passed = timer.as_mut().poll(cx).is_ready();
                self.read_timer = Some((deadline, timer));
                passed
            }
        }
    }

    /// Called when a read would wait: `true` when the connection has waited
    /// past its bound (or the host drains and nothing is in flight).
    fn read_bound_passed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.shared.busy() {
            self.waiting = Waiting::Busy;
            self.read_timer = None;
            return false;
        }
        if self.shared.draining.load(Ordering::Acquire) {
            return true;
        }
        let now = Instant::now();
        if self.waiting == Waiting::Busy {
            // The last request has been answered: idle from now.
            self.waiting = Waiting::Idle;
            self.read_timer = None;
        }
        let deadline = match (&self.read_timer, self.waiting) {
            (Some((at, _)), _) => *at,
            (None, Waiting::Head) => now + self.limits.header_read,
            (None, _) => now + self.limits.idle,
        };
        self.read_timer_passed(deadline, cx)
    }

    /// Bytes arrived: a new request head may have begun.
    fn bytes_read(&mut self, bytes: &[u8]) {
        if self.h2.is_none() && !bytes.is_empty() {
            let n = bytes.len().min(H2_PREFACE.len());
            self.h2 = Some(bytes[..n] == H2_PREFACE[..n]);
        }
        if self.waiting == Waiting::Idle && self.h2 != Some(true) && !self.shared.busy() {
            // The head's clock starts at its first byte.
            self.waiting = Waiting::Head;
            self.read_timer = None;
        } else if self.shared.busy() {
            self.waiting = Waiting::Busy;
            self.read_timer = None;
        }
    }

    fn write_result<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_timer = None;
            return polled;
        }
        let write = self.limits.write;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(write)));
        if timer.as_mut().poll(cx).is_ready() {
            tracing::debug!("client stopped reading: connection closed after {write:?}");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading its response",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(rest) = self.refusal {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.refusal = Some(&rest[n..]);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    let bare_lf = self.framing.scan(new);
                    self.bytes_read(new);
                    if let Some(at) = bare_lf {
                        tracing::debug!("request refused: a bare LF ends a line of its head");
                        buf.set_filled(before + at);
                        let rest = framing::REFUSAL;
                        let n = rest.len().min(buf.remaining());
                        buf.put_slice(&rest[..n]);
                        self.refusal = Some(&rest[n..]);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.read_bound_passed(cx) {
                    // As if the client had closed: hyper ends the connection.
                    tracing::debug!(waiting = ?self.waiting, "connection closed: read bound passed");
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.write_result(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.write_result(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.write_result(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.write_result(cx, polled)
    }
}

/// Raises the soft limit of open files to the hard one, as servers do, and
/// returns it: the number of descriptors the process may hold.
pub fn raise_open_files_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit for the call to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: `raised` is a valid rlimit within the hard limit.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        // `rlim_t` is not u64 on every Unix.
        #[allow(clippy::unnecessary_cast)]
        let limit = lim.rlim_cur as u64;
        limit
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}
