//! Helpers for the tests of the services (feature `test-support`, enabled
//! from dev-dependencies only). Bearer tokens are in [`crate::auth::testing`].

/// `T` as its command line declares it with no argument given and the
/// environment ignored: every field at its clap default. For the unit test
/// that a configuration's `Default` matches its flags; unlike
/// `T::parse_from([name])` it reads no `env =` variable, so a developer's
/// shell cannot change the result.
pub fn clap_defaults<T: clap::Parser>() -> anyhow::Result<T> {
    let name = T::command().get_name().to_string();
    crate::parse_ignoring_env([name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug, PartialEq)]
    struct Config {
        #[arg(
            long,
            env = "WARMHOUSE_TESTING_CLAP_DEFAULTS_PORT",
            default_value_t = 7
        )]
        port: u16,
        #[arg(long, env = "WARMHOUSE_TESTING_CLAP_DEFAULTS_NAME")]
        name: Option<String>,
    }

    #[test]
    fn defaults_come_from_the_declaration_alone() {
        let config: Config = clap_defaults().expect("defaults parse");
        assert_eq!(
            config,
            Config {
                port: 7,
                name: None
            }
        );
    }
}
