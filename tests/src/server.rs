//! A background thread running a current-thread tokio runtime for one listening socket.
//!
//! Dropping a [`ServerThread`] signals shutdown, which ends the accept loop; dropping the
//! runtime then cancels every connection task, so stalled connections never outlive the server.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// A server running on its own thread; stops when dropped.
pub(crate) struct ServerThread {
    addr: SocketAddr,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `addr` now (so the port is known and connectable when this returns), then runs
    /// `serve(listener, shutdown)` on a new thread until shutdown is signalled.
    pub(crate) fn spawn<F, Fut>(name: &str, addr: SocketAddr, serve: F) -> io::Result<Self>
    where
        F: FnOnce(TcpListener, watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let std_listener = StdListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("server thread: cannot adopt listener: {e}");
                            return;
                        }
                    };
                    let mut stop = rx.clone();
                    tokio::select! {
                        _ = serve(listener, rx) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
                // Dropping the runtime here cancels every spawned connection task.
                drop(runtime);
            })?;
        Ok(ServerThread {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
