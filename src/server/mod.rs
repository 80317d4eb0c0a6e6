//! Listening sockets, accept loops, per-connection limits and graceful shutdown.
//!
//! Two layouts of the serving threads (`--runtime`): one multi-thread runtime with one
//! accept loop, or one current-thread runtime per core, each with its own accept loop on
//! its own `SO_REUSEPORT` socket (`cores`, `listen`). Either way every accept loop
//! shares the one [`App`] (its gates, caches, filesystem threads and metrics) and
//! the one connection cap, and shutdown stops them all.
//!
//! HTTP/1.1 only: oip-media sits behind the indexer's proxy or a TLS-terminating front
//! proxy, which speak HTTP/1.1 to their upstreams.

mod cores;
pub(crate) mod fd_budget;
mod lane;
mod listen;
pub(crate) mod settings;
pub(crate) mod tcp_progress;
pub(crate) mod timed_io;
pub(crate) mod zero_copy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::app::{App, FileFields};
use crate::body::Body;
use crate::config::{Config, FastLane, RuntimeLayout};
use crate::error::StartError;
use crate::outbox::Outbox;
use crate::routes::Route;
use crate::settings::option_names;
use crate::state::ConnCounters;
use settings::ServerSettings;
use timed_io::{ConnActivity, InFlight, TimedIo, Timeouts};
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

/// Binds the configured address, builds the application and starts serving: on the
/// current Tokio runtime (`--runtime multi-thread`), or on `--workers` threads of their
/// own (`--runtime per-core`). Returns once the sockets accept connections. Raises the
/// open-file limit first and fits the descriptor bounds into it (see `fd_budget`).
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

/// The error of a listening socket on `addr` that could not be set up, naming the
/// settings that chose the address.
fn cannot_listen(addr: SocketAddr) -> impl Fn(std::io::Error) -> StartError {
    move |source| StartError::Bind {
        options: option_names::<ServerSettings>(&["bind", "port"]),
        addr,
        source,
    }
}

/// Like [`start`], with the shutdown trigger given as a future (main passes the signal
/// handler).
///
/// In the per-core layout the serving threads stop when the returned server's task
/// ends: on shutdown, or when the runtime this was called on goes away (as the accept
/// loop of the multi-thread layout would).
pub async fn start_with_shutdown(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, StartError> {
    let mut config = config;
    fd_budget::apply(&mut config)?;
    let addr = SocketAddr::new(config.server.bind, config.server.port);
    let listeners = listen::bind(addr, config.listeners()).map_err(cannot_listen(addr))?;
    let addr = listeners[0].local_addr().map_err(cannot_listen(addr))?;
    let layout = config.server.runtime;
    let app = App::new(config)?;
    let shared = Shared::new(&app)?;
    // `true` tells every accept loop to stop; a dropped sender does too.
    let (stop_tx, stop_rx) = watch::channel(false);
    let loops = match layout {
        RuntimeLayout::MultiThread => listeners
            .into_iter()
            .enumerate()
            .map(|(index, listener)| {
                let listener = TcpListener::from_std(listener).map_err(cannot_listen(addr))?;
                let (done_tx, done_rx) = oneshot::channel();
                let serve = accept_loop(index, listener, shared.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let _ = done_tx.send(serve.await);
                });
                Ok(done_rx)
            })
            .collect::<Result<Vec<_>, StartError>>()?,
        RuntimeLayout::PerCore => {
            cores::spawn(listeners, &shared, &stop_rx).map_err(|source| StartError::Workers {
                options: option_names::<ServerSettings>(&["runtime", "workers"]),
                source,
            })?
        }
    };
    drop(stop_rx);
    let summary = crate::app::spawn_summary(&app, shared.config.log.summary_interval);
    let grace = shared.config.server.shutdown_grace;
    let task = tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no longer accepting, finishing responses under way"
        );
        let _ = stop_tx.send(true);
        let mut in_time = true;
        for done in loops {
            // A loop whose thread died counts as finished: nothing of it is left to wait for.
            in_time &= done.await.unwrap_or(true);
        }
        summary.abort();
        if !in_time {
            tracing::warn!("shutdown grace period over; dropped the remaining connections");
        }
    });
    Ok(RunningServer {
        addr,
        app,
        stop: None,
        task,
    })
}

/// What every accept loop shares, whichever thread it runs on: the one application, and
/// the one connection cap.
#[derive(Clone)]
pub(crate) struct Shared {
    app: App,
    config: Arc<Config>,
    /// `--max-connections` slots for the whole server, not per loop.
    connection_slots: Arc<Semaphore>,
    counters: Arc<ConnCounters>,
    timeouts: Timeouts,
    /// `--fast-lane on`: what its connections share.
    lane: Option<Arc<lane::Lane>>,
}

impl Shared {
    fn new(app: &App) -> Result<Shared, StartError> {
        let config = Arc::clone(&app.state().config);
        let lane = match config.server.fast_lane {
            FastLane::On => Some(Arc::new(
                lane::Lane::new(
                    config.server.max_request_head,
                    http1_builder(config.server.max_request_head),
                )
                .map_err(|message| StartError::InvalidSetting {
                    option: "route table".to_owned(),
                    message,
                })?,
            )),
            FastLane::Off => None,
        };
        Ok(Shared {
            lane,
            connection_slots: Arc::new(Semaphore::new(config.server.max_connections.max(1))),
            counters: Arc::clone(&app.state().connections),
            timeouts: Timeouts {
                header_read: config.server.header_read_timeout,
                keep_alive: config.server.keep_alive_timeout,
                write_stall: config.server.write_stall_timeout,
                stalled_after: config.server.stalled_after,
            },
            app: app.clone(),
            config,
        })
    }
}

/// One request of a connection, whichever lane parsed it: the app answers it (`route`
/// is its route, looked up by the caller: see `App::respond`), and its body carries the
/// connection's in-flight token and sends through the connection's outbox, so guards
/// (the limiter permit, `in_flight`) last until the body's last byte is written, and
/// its file bytes may go out with sendfile.
async fn answer<B>(
    app: Arc<App>,
    route: Option<&'static Route>,
    fields: FileFields,
    in_flight: InFlight,
    outbox: Arc<Outbox>,
    peer: std::net::IpAddr,
    request: Request<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Made here, in this future's own state: made by the caller and passed in, the
    // app's future was moved whole (~2.6 KB) into this one, +900 instructions per GIF
    // request under callgrind.
    let mut response = app.respond(route, request, fields).await;
    let body = response.body_mut();
    body.note_client(peer);
    body.attach(in_flight);
    // Guards (the gate permit, `in_flight`) now last until the body's last byte is
    // written, and its file bytes may go out with sendfile.
    body.send_through(outbox);
    response
}

/// Resolves once the server is told to stop (or its controller is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}

/// Accepts and serves connections on one listening socket until told to stop, then lets
/// the responses under way on its connections finish within the grace period. Returns
/// whether they did.
async fn accept_loop(
    index: usize,
    listener: TcpListener,
    shared: Shared,
    stop: watch::Receiver<bool>,
) -> bool {
    let Shared {
        app,
        config,
        connection_slots,
        counters,
        timeouts,
        lane,
    } = shared;
    let graceful = GracefulShutdown::new();
    // Every lane connection holds a sender: once all are dropped, they are all done.
    let (lane_open, mut lane_done) = mpsc::channel::<()>(1);
    let stop_conn = stop.clone();
    let builder = http1_builder(config.server.max_request_head);
    let accepted_here = counters.accepted_by_listener.get(index).cloned();
    let stop = stopped(stop);
    tokio::pin!(stop);

    loop {
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
            () = &mut stop => break,
        };
        // A connection slot for it. At the cap this loop stops accepting until one
        // frees, so later clients wait in the kernel's backlog: one accepted client per
        // loop waits in our hands, never more. (Taking the slot before accepting, as
        // one loop could, would let a per-core loop sit on a free slot waiting for a
        // client on its own socket while a client queued on another core's waits.)
        let slot = match Arc::clone(&connection_slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                counters.cap_reached.inc();
                tracing::warn!(
                    max_connections = config.server.max_connections,
                    "connection cap reached; new clients wait in the backlog"
                );
                tokio::select! {
                    slot = Arc::clone(&connection_slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut stop => break,
                }
            }
        };
        counters.accepted.inc();
        if let Some(accepted_here) = &accepted_here {
            accepted_here.inc();
        }
        counters.open.inc();
        let _ = stream.set_nodelay(true);
        if config.server.send_buffer > 0 {
            let size = usize::try_from(config.server.send_buffer).unwrap_or(usize::MAX);
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
            config.store.sendfile_min_bytes,
            Arc::clone(&counters),
        );
        let timed = TimedIo::new(
            socket,
            Arc::clone(&activity),
            timeouts,
            Arc::clone(&counters),
        );
        // This connection's own handle on the app: a request clones it (one count in a
        // line only this connection touches) rather than the app's three shared `Arc`s,
        // whose counts every core would bounce between them on every request.
        let conn_app = Arc::new(app.clone());
        if let Some(lane) = &lane {
            let conn = lane::Conn {
                app: conn_app,
                peer: peer.ip(),
                activity,
                outbox,
            };
            let serve = lane::serve(Arc::clone(lane), timed, conn, stop_conn.clone());
            let counters = Arc::clone(&counters);
            let open = lane_open.clone();
            tokio::spawn(async move {
                if let Err(error) = serve.await {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                counters.open.dec();
                drop(slot);
                drop(open);
            });
            continue;
        }
        let io = TokioIo::new(timed);
        let service = service_fn(move |request| {
            // Begin before the future runs: the socket must see "busy" as soon as the
            // head is parsed, not when the handler is first polled.
            let in_flight = activity.begin();
            let app = Arc::clone(&conn_app);
            let outbox = Arc::clone(&outbox);
            let route = app.route_of(request.uri().path());
            async move {
                Ok::<_, std::convert::Infallible>(
                    answer(
                        app,
                        route,
                        FileFields::InMap,
                        in_flight,
                        outbox,
                        peer.ip(),
                        request,
                    )
                    .await,
                )
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
    drop(lane_open);
    tokio::time::timeout(config.server.shutdown_grace, async {
        graceful.shutdown().await;
        // Lane connections saw the stop themselves; wait for the last to finish.
        let _ = lane_done.recv().await;
    })
    .await
    .is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_that_cannot_be_set_up_names_the_settings_that_chose_it() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let error = cannot_listen(addr)(std::io::ErrorKind::AddrInUse.into());
        assert!(
            error
                .to_string()
                .starts_with("--bind / BIND, --port / PORT: cannot listen on 127.0.0.1:1: "),
            "{error}"
        );
    }
}
