//! Who a front-door request comes from. The server's auth layer decides it; admission and the
//! pipeline read it without knowing anything about HTTP.

/// A client (`None` when warden runs open, without `[clients]`), or the admin, whose token is
/// accepted on the front door too and may see every client.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// Index into `Config::clients`; None = the anonymous client (open mode, or the admin).
    pub client: Option<usize>,
    /// Carries the admin token (or warden runs open with no token): sees every client's usage.
    pub admin: bool,
    /// Its Authorization header was a warden credential, never to be forwarded upstream.
    pub warden_key: bool,
}

impl Caller {
    /// The admin, or the client that owns it (open mode: everyone is the anonymous client).
    pub fn may_see(&self, owner: Option<usize>) -> bool {
        self.admin || self.client == owner
    }
}
