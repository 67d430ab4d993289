//! Command-line argument groups the services share, each flattened
//! (`#[command(flatten)]`) into a service's configuration. Every option is
//! also an environment variable; the flag names, variable names and
//! defaults are those the deployment files (helm/warmhouse,
//! docker-compose*.yml) and docs/ name, so they must not change.
//!
//! Each group's [`Default`] is its declared defaults without reading the
//! environment: tests build configurations from it.
//!
//! Logging is a group too ([`LogArgs`]: `RUST_LOG`, `WARMHOUSE_LOG_FORMAT`),
//! flattened into every service's configuration: a binary parses its
//! configuration first, then installs logging from it, so a bad filter or
//! format stops the service with a clear message instead of being ignored.
//!
//! What stays out of the groups: options whose variable differs between
//! services, such as the HTTP listen address (`WARMHOUSE_QUERY_LISTEN`,
//! `WARMHOUSE_REGISTRY_LISTEN`, `WARMHOUSE_INGEST_ADMIN_LISTEN`, ...) and
//! the broker's `WARMHOUSE_BROKER_KAFKA_BOOTSTRAP`; a clap group declares
//! one variable an option.

use anyhow::Context;
use warmhouse_contracts::kafka::topics;

/// Kafka bootstrap servers when none is configured.
pub const DEFAULT_KAFKA_BOOTSTRAP: &str = "127.0.0.1:9092";
/// InfluxDB's v1 HTTP API when none is configured.
pub const DEFAULT_INFLUX_URL: &str = "http://127.0.0.1:8086";
/// The InfluxDB database of the telemetry when none is configured.
pub const DEFAULT_INFLUX_DATABASE: &str = "warmhouse";
/// The log filter when none is configured.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Where Kafka is: `--kafka-bootstrap`, `WARMHOUSE_KAFKA_BOOTSTRAP`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated (empty: no Kafka, where the
    /// service can run without it).
    #[arg(
        id = "kafka_bootstrap",
        long = "kafka-bootstrap",
        value_name = "KAFKA_BOOTSTRAP",
        env = "WARMHOUSE_KAFKA_BOOTSTRAP",
        default_value = DEFAULT_KAFKA_BOOTSTRAP
    )]
    pub bootstrap: String,
}

impl Default for KafkaArgs {
    fn default() -> Self {
        Self {
            bootstrap: DEFAULT_KAFKA_BOOTSTRAP.into(),
        }
    }
}

impl KafkaArgs {
    /// The given bootstrap servers.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
        }
    }
}

/// One group a Kafka topic, so that each service flattens in the topics it
/// uses and no other: `--<kind>-topic`, `WARMHOUSE_TOPIC_<KIND>`, defaulting
/// to the contract's name ([`warmhouse_contracts::kafka::topics`]).
macro_rules! topic_args {
    ($(#[$doc:meta])* $name:ident, $id:literal, $flag:literal, $value:literal, $env:literal, $default:expr) => {
        $(#[$doc])*
        #[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            #[arg(id = $id, long = $flag, value_name = $value, env = $env, default_value = $default)]
            pub name: String,
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    name: $default.into(),
                }
            }
        }

        impl $name {
            /// The topic called `name`.
            pub fn new(name: impl Into<String>) -> Self {
                Self { name: name.into() }
            }
        }
    };
}

topic_args!(
    /// The telemetry topic (readings, key = device id).
    TelemetryTopic,
    "telemetry_topic",
    "telemetry-topic",
    "TELEMETRY_TOPIC",
    "WARMHOUSE_TOPIC_TELEMETRY",
    topics::TELEMETRY
);
topic_args!(
    /// Device events: reported state, presence, command acks.
    DeviceEventsTopic,
    "device_events_topic",
    "device-events-topic",
    "DEVICE_EVENTS_TOPIC",
    "WARMHOUSE_TOPIC_DEVICE_EVENTS",
    topics::DEVICE_EVENTS
);
topic_args!(
    /// What could not be decoded or written, with the reason.
    DeadLettersTopic,
    "dead_letters_topic",
    "dead-letters-topic",
    "DEAD_LETTERS_TOPIC",
    "WARMHOUSE_TOPIC_DEAD_LETTERS",
    topics::DEAD_LETTERS
);
topic_args!(
    /// Commands from the registry to devices.
    DeviceCommandsTopic,
    "device_commands_topic",
    "device-commands-topic",
    "DEVICE_COMMANDS_TOPIC",
    "WARMHOUSE_TOPIC_DEVICE_COMMANDS",
    topics::DEVICE_COMMANDS
);
topic_args!(
    /// The registry's events (registrations, revocations).
    RegistryEventsTopic,
    "registry_events_topic",
    "registry-events-topic",
    "REGISTRY_EVENTS_TOPIC",
    "WARMHOUSE_TOPIC_REGISTRY_EVENTS",
    topics::REGISTRY_EVENTS
);

/// Where the telemetry is in InfluxDB: `--influx-url`
/// (`WARMHOUSE_INFLUX_URL`) and `--influx-database`
/// (`WARMHOUSE_INFLUX_DATABASE`).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct InfluxArgs {
    /// Base URL of InfluxDB's v1 HTTP API.
    #[arg(
        id = "influx_url",
        long = "influx-url",
        value_name = "INFLUX_URL",
        env = "WARMHOUSE_INFLUX_URL",
        default_value = DEFAULT_INFLUX_URL
    )]
    pub url: String,
    /// InfluxDB database of the telemetry (the ingest writer fills it).
    #[arg(
        id = "influx_database",
        long = "influx-database",
        value_name = "INFLUX_DATABASE",
        env = "WARMHOUSE_INFLUX_DATABASE",
        default_value = DEFAULT_INFLUX_DATABASE
    )]
    pub database: String,
}

impl Default for InfluxArgs {
    fn default() -> Self {
        Self {
            url: DEFAULT_INFLUX_URL.into(),
            database: DEFAULT_INFLUX_DATABASE.into(),
        }
    }
}

impl InfluxArgs {
    /// The default database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// How a service logs: `--log-filter` (`RUST_LOG`) and `--log-format`
/// (`WARMHOUSE_LOG_FORMAT`). Both are checked when the command line is
/// parsed; [`LogArgs::init`] installs the subscriber. Their ids are the
/// field names (clap's debug checks, run by every configuration's tests,
/// would catch a clash).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct LogArgs {
    /// What to log: a `tracing` filter, e.g. `info` or
    /// `info,rumqttd=warn,warmhouse_broker=debug`.
    #[arg(
        long = "log-filter",
        env = "RUST_LOG",
        default_value = DEFAULT_LOG_FILTER,
        value_parser = log_filter
    )]
    pub filter: String,
    /// Log lines as text, or as JSON lines for log collectors.
    #[arg(
        long = "log-format",
        env = "WARMHOUSE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub format: LogFormat,
}

/// The form of the log lines: human-readable text, or one JSON object a
/// line. (The variants carry no doc comments: clap would print them, and
/// `--help` would switch every option to its long layout.)
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self {
            filter: DEFAULT_LOG_FILTER.into(),
            format: LogFormat::Text,
        }
    }
}

impl LogArgs {
    /// Installs the `tracing` subscriber: lines on stdout that pass the
    /// filter, in the format. Where one is installed already (a test
    /// starting several services), that one stays.
    pub fn init(&self) -> anyhow::Result<()> {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.filter)
            .with_context(|| format!("invalid log filter {:?}", self.filter))?;
        crate::install_tracing(filter, self.format);
        Ok(())
    }
}

/// `value` when it parses as a `tracing` filter (clap's value parser of
/// `--log-filter`).
fn log_filter(value: &str) -> Result<String, String> {
    match tracing_subscriber::EnvFilter::try_new(value) {
        Ok(_) => Ok(value.to_string()),
        Err(err) => Err(format!(
            "not a log filter ({err}); e.g. info, or info,rumqttd=warn"
        )),
    }
}

/// The command line of a service with a REST API: its configuration `C`
/// (name, about and options as `C` declares them) and `--print-openapi`,
/// which prints the API's OpenAPI document (JSON) from `openapi` and exits
/// (scripts/update-api-docs.sh and the docs read it so). `None` when the
/// document was printed; a bad command line ends the process as
/// [`clap::Parser::parse`] does.
pub fn parse_or_print_openapi<C: clap::Parser>(
    openapi: impl FnOnce() -> utoipa::openapi::OpenApi,
) -> anyhow::Result<Option<C>> {
    const PRINT_OPENAPI: &str = "print_openapi";
    // Listed first in `--help`, before the configuration's options.
    let mut command = C::command()
        .mut_args(|arg| {
            let order = arg.get_display_order();
            arg.display_order(order + 1)
        })
        .arg(
            clap::Arg::new(PRINT_OPENAPI)
                .long("print-openapi")
                .action(clap::ArgAction::SetTrue)
                .help("Print the OpenAPI document (JSON) and exit, e.g. for docs and CI")
                .display_order(0),
        );
    let matches = command.get_matches_mut();
    if matches.get_flag(PRINT_OPENAPI) {
        let json = openapi()
            .to_pretty_json()
            .context("serialising the OpenAPI document")?;
        println!("{json}");
        return Ok(None);
    }
    match C::from_arg_matches(&matches) {
        Ok(config) => Ok(Some(config)),
        Err(err) => err.format(&mut command).exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug, PartialEq, Eq, Default)]
    #[command(name = "every-group")]
    struct Every {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        telemetry: TelemetryTopic,
        #[command(flatten)]
        device_events: DeviceEventsTopic,
        #[command(flatten)]
        dead_letters: DeadLettersTopic,
        #[command(flatten)]
        device_commands: DeviceCommandsTopic,
        #[command(flatten)]
        registry_events: RegistryEventsTopic,
        #[command(flatten)]
        influx: InfluxArgs,
    }

    #[test]
    fn defaults_are_what_the_flags_declare() {
        let declared: Every = crate::testing::clap_defaults().expect("the defaults parse");
        assert_eq!(declared, Every::default());
    }

    #[derive(clap::Parser, Debug, PartialEq, Eq, Default)]
    #[command(name = "logging")]
    struct Logging {
        #[command(flatten)]
        log: LogArgs,
    }

    fn logging(args: &[&str]) -> anyhow::Result<Logging> {
        crate::parse_ignoring_env(std::iter::once("logging").chain(args.iter().copied()))
    }

    #[test]
    fn log_defaults_are_what_the_flags_declare() {
        let declared: Logging = crate::testing::clap_defaults().expect("the defaults parse");
        assert_eq!(declared, Logging::default());
        assert_eq!(declared.log.filter, "info");
        assert_eq!(declared.log.format, LogFormat::Text);
    }

    #[test]
    fn log_flags_and_variables_keep_their_names() {
        use clap::CommandFactory;
        let command = Logging::command();
        let names: Vec<(&str, String)> = command
            .get_arguments()
            .filter_map(|arg| {
                Some((
                    arg.get_long()?,
                    arg.get_env()?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        assert_eq!(
            names,
            [
                ("log-filter", "RUST_LOG".to_string()),
                ("log-format", "WARMHOUSE_LOG_FORMAT".to_string())
            ]
        );
    }

    #[test]
    fn a_log_filter_and_format_are_taken_as_given() {
        let parsed = logging(&["--log-filter", "info,rumqttd=warn", "--log-format", "json"])
            .expect("a valid filter and format parse");
        assert_eq!(parsed.log.filter, "info,rumqttd=warn");
        assert_eq!(parsed.log.format, LogFormat::Json);
    }

    /// Checks that `args` are refused with a message naming every one of
    /// `words`.
    fn assert_refused(args: &[&str], words: &[&str]) {
        let message = match logging(args) {
            Ok(parsed) => panic!("{args:?} parsed as {parsed:?}"),
            Err(err) => format!("{err:#}"),
        };
        for word in words {
            assert!(message.contains(word), "{word:?} missing from: {message}");
        }
    }

    #[test]
    fn a_bad_log_filter_is_refused_with_a_clear_message() {
        assert_refused(
            &["--log-filter", "info,rumqttd=loud"],
            &["--log-filter", "info,rumqttd=loud", "not a log filter"],
        );
    }

    #[test]
    fn a_bad_log_format_is_refused_with_a_clear_message() {
        assert_refused(
            &["--log-format", "jsno"],
            &["--log-format", "jsno", "text, json"],
        );
    }

    #[test]
    fn log_args_install_a_subscriber() {
        LogArgs::default()
            .init()
            .expect("the default filter parses");
        // A second one (several services in one test process) is no error.
        LogArgs {
            filter: "debug".into(),
            format: LogFormat::Json,
        }
        .init()
        .expect("a second install is harmless");
    }

    #[test]
    fn flags_and_variables_keep_their_names() {
        use clap::CommandFactory;
        let command = Every::command();
        let names: Vec<(String, String)> = command
            .get_arguments()
            .filter_map(|arg| {
                Some((
                    arg.get_long()?.to_string(),
                    arg.get_env()?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        let expected = [
            ("kafka-bootstrap", "WARMHOUSE_KAFKA_BOOTSTRAP"),
            ("telemetry-topic", "WARMHOUSE_TOPIC_TELEMETRY"),
            ("device-events-topic", "WARMHOUSE_TOPIC_DEVICE_EVENTS"),
            ("dead-letters-topic", "WARMHOUSE_TOPIC_DEAD_LETTERS"),
            ("device-commands-topic", "WARMHOUSE_TOPIC_DEVICE_COMMANDS"),
            ("registry-events-topic", "WARMHOUSE_TOPIC_REGISTRY_EVENTS"),
            ("influx-url", "WARMHOUSE_INFLUX_URL"),
            ("influx-database", "WARMHOUSE_INFLUX_DATABASE"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(flag, env)| (flag.to_string(), env.to_string()))
            .collect();
        assert_eq!(names, expected);
    }
}
