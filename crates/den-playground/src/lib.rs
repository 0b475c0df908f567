//! den's playground: a page that shows the Discord stand-in
//! ([`den_standin`]) the way a person uses Discord, so den can be tried
//! with no account, no key and no server.
//!
//! The page is plain HTML, CSS and JavaScript compiled into the binary. It
//! reads the world through [`den_standin::view`] as one of three people
//! ([`seed::Cast`]), acts through the stand-in as that person would (post,
//! attach, run a slash command, press a button, pick from a menu, start a
//! thread), follows changes over server-sent events, and shows every REST
//! call and gateway frame between den and the stand-in.
//!
//! Running den against it is the binary's job (`den playground`); this
//! crate knows nothing of den.

pub mod seed;
mod web;

pub use web::{About, Playground};

/// Serves the page on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    playground: Playground,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, playground.router()).with_graceful_shutdown(stop).await
}
