//! The device registry's REST API as the phases that need it (commands, the
//! fleet) call it: one value instead of a client, a URL and a token passed
//! side by side to every step.

use anyhow::Context;
use warmhouse_stack::Stack;

/// The registry of a running stack, with an admin token.
#[derive(Clone)]
pub(crate) struct RegistryApi {
    pub http: reqwest::Client,
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    pub token: String,
}

impl RegistryApi {
    /// The stack's registry, called with `http` (each phase tunes its own
    /// client: timeouts, connection pool).
    pub fn new(stack: &Stack, http: reqwest::Client) -> anyhow::Result<Self> {
        Ok(Self {
            url: stack.registry_url().context("the stack has no registry")?,
            token: stack.admin_token()?,
            http,
        })
    }
}
