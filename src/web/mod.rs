//! porthole-web: the dashboard's browser shell (feature `web`).
//!
//! A browser brings a ticket signed by the platform's dashboard
//! ([`ticket`]); porthole-web serves the terminal page ([`page`]) and,
//! per websocket, runs the stock OpenSSH client with a fresh hop
//! certificate to the sshd of the host that runs the instance
//! ([`session`]), relaying the client's pty. It never enters a container
//! itself: every web session is an ordinary porthole session on the node,
//! with its limits, audit (`via: "web"`), drains and messages.

pub mod page;
pub mod server;
pub mod session;
pub mod ticket;
