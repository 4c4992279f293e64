//! Shutdown signals: [`signal`] resolves on the first SIGINT or SIGTERM (Ctrl-C, `kill`, Kubernetes
//! stopping a pod). What happens then is `server`'s: stop accepting, finish the requests in flight,
//! stop the engine, exit 0.

/// Resolves with the signal's name when SIGINT or SIGTERM arrives. If a handler cannot be installed
/// (not expected on Linux), that signal is logged and ignored rather than ending the server.
pub async fn signal() -> &'static str {
    let interrupt = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGINT");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
                "SIGTERM"
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&'static str>();
    tokio::select! {
        name = interrupt => name,
        name = terminate => name,
    }
}
