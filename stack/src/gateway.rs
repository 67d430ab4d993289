//! The API gateway: real nginx with `gateway/gateway.conf.template`, the
//! same file containers use, rendered with the stack's addresses
//! (docs/adr/0015-api-gateway.md, gateway/README.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use warmhouse_devstack::Nginx;

/// The gateway's configuration template (HTTP context, `${GATEWAY_*}`
/// placeholders).
pub const TEMPLATE: &str = include_str!("../../gateway/gateway.conf.template");

/// Requests per second and client address, with a burst served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    /// What gateway/README.md recommends for production and the local
    /// stack uses: a person with Swagger UI or a script never meets it, a
    /// runaway client does within a second.
    pub const RECOMMENDED: Self = Self {
        per_second: 20,
        burst: 40,
    };
    /// For tests that are not about the limit: in place, but out of reach.
    pub const GENEROUS: Self = Self {
        per_second: 10_000,
        burst: 10_000,
    };
}

/// Where the gateway listens and what it routes to.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// device-registry (`/api/v1/...`, `/api/heating/...`).
    pub registry: SocketAddr,
    /// ingest-query (`/api/v1/{devices,homes}/{id}/telemetry...`).
    pub telemetry: SocketAddr,
    pub rate_limit: RateLimit,
    pub access_log: PathBuf,
    /// Peers whose `X-Forwarded-For` names the client (CIDR).
    pub real_ip_from: String,
}

impl GatewayConfig {
    /// The template's variables for this configuration.
    pub fn variables(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let access_log = self
            .access_log
            .to_str()
            .context("the access log path is not UTF-8")?;
        Ok(vec![
            ("GATEWAY_LISTEN", self.listen.to_string()),
            ("GATEWAY_REGISTRY_UPSTREAM", self.registry.to_string()),
            ("GATEWAY_TELEMETRY_UPSTREAM", self.telemetry.to_string()),
            (
                "GATEWAY_RATE_LIMIT",
                format!("{}r/s", self.rate_limit.per_second),
            ),
            ("GATEWAY_RATE_BURST", self.rate_limit.burst.to_string()),
            ("GATEWAY_ACCESS_LOG", access_log.to_string()),
            ("GATEWAY_REAL_IP_FROM", self.real_ip_from.clone()),
        ])
    }

    /// [`TEMPLATE`] with this configuration substituted.
    pub fn render(&self) -> anyhow::Result<String> {
        let variables = self.variables()?;
        let pairs: Vec<(&str, &str)> = variables.iter().map(|(k, v)| (*k, v.as_str())).collect();
        render(TEMPLATE, &pairs)
    }
}

/// Starts nginx in `dir` with the rendered template; it stops when the
/// handle is dropped.
pub fn start(dir: &Path, config: &GatewayConfig) -> anyhow::Result<Nginx> {
    Nginx::start(dir, config.listen.port(), &config.render()?)
        .context("starting the gateway (nginx)")
}

/// Substitutes `${NAME}` as envsubst does. A `${UPPER_CASE}` with no value
/// is an error rather than an empty string (which envsubst would leave and
/// nginx might accept as something else); values must be single nginx
/// tokens, so none can add a directive.
pub fn render(template: &str, variables: &[(&str, &str)]) -> anyhow::Result<String> {
    for (name, value) in variables {
        if value.is_empty()
            || value
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, ';' | '{' | '}' | '"' | '\'' | '$' | '#'))
        {
            bail!("{name}={value:?} is not a single nginx word");
        }
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .with_context(|| format!("unclosed ${{ in the template near {:?}", &rest[start..]))?;
        let name = &after[..end];
        match variables.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => out.push_str(value),
            None if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') =>
            {
                bail!("the template needs ${{{name}}}, which was not given");
            }
            // Not ours (an nginx regex quantifier, say): left as it is.
            None => out.push_str(&rest[start..start + 3 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_substitutes_and_refuses_missing_or_unsafe_values() {
        let text = render("a ${X} b ${Y}; c $uri ${x}", &[("X", "1"), ("Y", "two")]).unwrap();
        assert_eq!(text, "a 1 b two; c $uri ${x}");
        let err = render("listen ${PORT};", &[]).unwrap_err();
        assert!(err.to_string().contains("${PORT}"), "{err}");
        let err = render("listen ${PORT};", &[("PORT", "80; include /etc/x")]).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
        assert!(render("x ${PORT", &[("PORT", "1")]).is_err());
    }

    #[test]
    fn template_takes_exactly_the_documented_variables() {
        let config = GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            registry: SocketAddr::from(([127, 0, 0, 1], 8082)),
            telemetry: SocketAddr::from(([127, 0, 0, 1], 8081)),
            rate_limit: RateLimit::RECOMMENDED,
            access_log: PathBuf::from("/dev/stdout"),
            real_ip_from: "127.0.0.1/32".into(),
        };
        let rendered = config.render().unwrap();
        assert!(!rendered.contains("${GATEWAY"), "{rendered}");
        assert!(rendered.contains("rate=20r/s"));
        assert!(rendered.contains("burst=40 nodelay"));
        let readme = include_str!("../../gateway/README.md");
        for (name, _) in config.variables().unwrap() {
            assert!(TEMPLATE.contains(&format!("${{{name}}}")), "{name} unused");
            assert!(readme.contains(&format!("`{name}`")), "{name} undocumented");
        }
    }

    /// The gateway refuses what the registry would refuse anyway, and
    /// passes everything the registry accepts.
    #[test]
    fn body_limit_matches_the_registry() {
        let limit = TEMPLATE
            .lines()
            .find_map(|l| l.trim().strip_prefix("client_max_body_size "))
            .expect("client_max_body_size in the template");
        let kib: usize = limit
            .trim_end_matches(';')
            .strip_suffix('k')
            .expect("in KiB")
            .parse()
            .expect("a number");
        assert_eq!(kib * 1024, warmhouse_device_registry::MAX_BODY_BYTES);
        let buffer = format!("client_body_buffer_size {limit}");
        assert!(TEMPLATE.contains(&buffer), "bodies stay in memory");
    }
}
