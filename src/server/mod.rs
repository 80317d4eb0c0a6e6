//! Listening socket, accept loop, per-connection limits and graceful shutdown.
//!
//! HTTP/1.1 only: oip-media sits behind the indexer's proxy or a TLS-terminating front
//! proxy, which speak HTTP/1.1 to their upstreams.

pub mod fd_budget;
pub mod tcp_progress;
pub mod timed_io;
pub mod zero_copy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;
use crate::error::StartError;
use crate::outbox::Outbox;
use timed_io::{ConnActivity, TimedIo, Timeouts};
use zero_copy::ZeroCopyIo;

/// A server that is listening. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    addr: SocketAddr,
    app: App,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// The address actually bound (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The application behind the socket (its state, counters and caches).
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Stops accepting, lets responses under way finish within the configured grace
    /// period, and waits until the accept loop has ended.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops on its own (it only does when told to).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds the configured address, builds the application and starts serving on the
/// current Tokio runtime. Returns once the socket accepts connections. Raises the
/// open-file limit first and fits the descriptor bounds into it (see [`fd_budget`]).
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    start_with_shutdown(config, async move {
        let _ = stop_rx.await;
    })
    .await
    .map(|mut running| {
        running.stop = Some(stop_tx);
        running
    })
}

/// Like [`start`], with the shutdown trigger given as a future (main passes the signal
/// handler).
pub async fn start_with_shutdown(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, StartError> {
    let mut config = config;
    fd_budget::apply(&mut config)?;
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let app = App::new(config)?;
    let task = tokio::spawn(accept_loop(listener, app.clone(), shutdown));
    Ok(RunningServer {
        addr,
        app,
        stop: None,
        task,
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // A deep backlog: past `max_connections` new clients wait here, not in our memory.
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    let config = Arc::clone(&app.state().config);
    let connection_slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let timeouts = Timeouts {
        header_read: config.header_read_timeout,
        keep_alive: config.keep_alive_timeout,
        write_stall: config.write_stall_timeout,
        stalled_after: config.stalled_after,
    };
    let counters = Arc::clone(&app.state().connections);
    let summary = crate::app::spawn_summary(&app, config.summary_interval);
    let graceful = GracefulShutdown::new();
    let builder = http1_builder(config.max_request_head);
    tokio::pin!(shutdown);

    loop {
        // Take a connection slot before accepting: at the cap, clients queue in the
        // kernel's backlog instead of costing us a descriptor and a task each.
        let slot = match Arc::clone(&connection_slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                counters.cap_reached.inc();
                tracing::warn!(
                    max_connections = config.max_connections,
                    "connection cap reached; new clients wait in the backlog"
                );
                tokio::select! {
                    slot = Arc::clone(&connection_slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        counters.accepted.inc();
        counters.open.inc();
        let _ = stream.set_nodelay(true);
        if config.send_buffer > 0 {
            let size = usize::try_from(config.send_buffer).unwrap_or(usize::MAX);
            if let Err(error) = socket2::SockRef::from(&stream).set_send_buffer_size(size) {
                tracing::debug!(%error, "cannot set SO_SNDBUF");
            }
        }
        let activity = Arc::new(ConnActivity::default());
        // Shared by this connection's response bodies and its socket: which mapped
        // files may be sent with sendfile, and what to release once sent.
        let outbox = Arc::new(Outbox::default());
        let socket = ZeroCopyIo::new(
            stream,
            Arc::clone(&outbox),
            config.sendfile_min_bytes,
            Arc::clone(&counters),
        );
        let io = TokioIo::new(TimedIo::new(
            socket,
            Arc::clone(&activity),
            timeouts,
            Arc::clone(&counters),
        ));
        let conn_app = app.clone();
        let service = service_fn(move |request| {
            // Begin before the future runs: the socket must see "busy" as soon as the
            // head is parsed, not when the handler is first polled.
            let in_flight = activity.begin();
            let app = conn_app.clone();
            let outbox = Arc::clone(&outbox);
            async move {
                let mut response = app.handle(request).await;
                let body = response.body_mut();
                body.attach(in_flight);
                // Guards (the limiter permit, `in_flight`) now last until the body's
                // last byte is written, and its file bytes may go out with sendfile.
                body.send_through(outbox);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let watched = graceful.watch(builder.serve_connection(io, service));
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            counters.open.dec();
            drop(slot);
        });
    }

    drop(listener);
    summary.abort();
    tracing::info!(
        grace_secs = config.shutdown_grace.as_secs(),
        "shutting down: no longer accepting, finishing responses under way"
    );
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; dropping remaining connections");
    }
}

/// hyper's HTTP/1 settings for every connection. `max_request_head` was checked by
/// `Config::validate`; hyper's own ceiling (~408 KiB of read buffer) would otherwise let
/// every connection hold that much of an unfinished head.
fn http1_builder(max_request_head: u64) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // Bounds both a complete head and the read buffer of an unfinished one (`431`).
        // Not `max_buf_size`: that one also bounds the write queue, and hyper checks it only
        // while a head is incomplete, so a head that arrives whole in one read slips past it.
        .max_header_size(usize::try_from(max_request_head).unwrap_or(usize::MAX))
        .timer(TokioTimer::new())
        // Our TimedIo enforces head and idle deadlines separately (see its docs).
        .header_read_timeout(None)
        // Queue body chunks and hand them to the socket as they are (never copied into
        // hyper's buffer): `ZeroCopyIo` sends mapped ones with sendfile.
        .writev(true);
    builder
}
