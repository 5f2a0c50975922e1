//! Subscription settings (`subscriptions.*`): the live homepage's two doors (`/graphql/ws`,
//! graphql-transport-ws, and `/graphql/stream`, GraphQL over SSE) and what bounds them —
//! connections in all, per client address and per user, subscriptions per connection, the
//! `connection_init` timeout, keepalive, the per-subscriber buffer and the largest message.
//! Only the settings live here; the doors are `crate::live`'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Invalid, duration, invalid};

/// `subscriptions.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionSettings {
    /// Serve subscriptions at `/graphql/ws` and `/graphql/stream` (`subscriptions.enabled`).
    pub enabled: bool,
    /// Most subscription connections (WebSockets and SSE streams) open at once on this instance
    /// (`subscriptions.max_connections`); more are refused (`503` before the upgrade).
    pub max_connections: usize,
    /// Most subscription connections from one client address
    /// (`subscriptions.max_connections_per_address`); more are refused with `429`.
    pub max_connections_per_address: usize,
    /// Most subscription connections of one signed-in user
    /// (`subscriptions.max_connections_per_user`); more are refused (`429`, or close code
    /// `4429` when the user is only known from `connection_init`).
    pub max_connections_per_user: usize,
    /// Most subscriptions running at once on one WebSocket
    /// (`subscriptions.max_subscriptions_per_connection`); one more is answered with an
    /// `error` message (`RATE_LIMITED`).
    pub max_subscriptions_per_connection: usize,
    /// How long a WebSocket may take to send `connection_init` (`subscriptions.init_timeout`);
    /// then it is closed with `4408`.
    #[serde(with = "duration")]
    pub init_timeout: Duration,
    /// How often the server pings an idle WebSocket (`subscriptions.ping_interval`), and sends
    /// an SSE comment to keep proxies from closing the stream.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// A WebSocket that has sent nothing (no pong, no message) for this long is closed
    /// (`subscriptions.idle_timeout`, at least twice `ping_interval`).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Messages one subscriber may have waiting to be written (`subscriptions.buffer`): a
    /// reader that falls this far behind is closed (WebSocket close code `4413`, SSE: an error
    /// event) instead of growing the process.
    pub buffer: usize,
    /// Largest message a client may send on a WebSocket, in bytes
    /// (`subscriptions.max_message_bytes`); a larger one closes the socket with `1009`.
    pub max_message_bytes: usize,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_connections: 20_000,
            max_connections_per_address: 200,
            max_connections_per_user: 20,
            max_subscriptions_per_connection: 20,
            init_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            buffer: 32,
            max_message_bytes: 64 * 1024,
        }
    }
}

impl SubscriptionSettings {
    /// Checks the bounds.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        for (key, n) in [
            ("subscriptions.max_connections", self.max_connections),
            (
                "subscriptions.max_connections_per_address",
                self.max_connections_per_address,
            ),
            (
                "subscriptions.max_connections_per_user",
                self.max_connections_per_user,
            ),
            (
                "subscriptions.max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
            ),
            ("subscriptions.buffer", self.buffer),
        ] {
            if n == 0 {
                return Err(invalid(key, "must be > 0".into()));
            }
        }
        if self.max_message_bytes < 1024 {
            return Err(invalid(
                "subscriptions.max_message_bytes",
                "must be at least 1024".into(),
            ));
        }
        for (key, d) in [
            ("subscriptions.init_timeout", self.init_timeout),
            ("subscriptions.ping_interval", self.ping_interval),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be > 0".into()));
            }
        }
        if self.idle_timeout < self.ping_interval * 2 {
            return Err(invalid(
                "subscriptions.idle_timeout",
                "must be at least twice subscriptions.ping_interval".into(),
            ));
        }
        Ok(())
    }
}
