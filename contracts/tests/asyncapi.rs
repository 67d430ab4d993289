//! docs/api/asyncapi.yaml against the code.
//!
//! The official AsyncAPI parser (`@asyncapi/parser`, installed by
//! scripts/install-deps.sh into tools/asyncapi/node_modules) validates the
//! document and every message example against its schemas; it hands back each
//! message with its dereferenced schemas. Here every example is then decoded
//! by the real Rust decoder of its message, and each schema is probed: every
//! required field is removed (the decoder must refuse), every optional one
//! too (it must accept), every enum value, type, const, length, range and
//! count bound is tried on both sides. So the document cannot drift from the
//! code without a test failing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{json, Map, Value};
use warmhouse_contracts::device::{self, CommandAck, ReportedState, StatusMessage};
use warmhouse_contracts::domain::DomainEvent;
use warmhouse_contracts::kafka::{
    self, CommandRecord, DeadLetter, DeviceEvent, DeviceEventKind, VERSION_HEADER,
};
use warmhouse_contracts::telemetry::{TelemetryEnvelope, TelemetryMessage};
use warmhouse_contracts::topics::{Channel, TENANT_ROOT};
use warmhouse_contracts::{DecodeError, WIRE_VERSION};

const DOCUMENT: &str = "docs/api/asyncapi.yaml";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("contracts/ has a parent")
        .to_path_buf()
}

/// What `tools/asyncapi/validate.js` printed: the messages of the document.
fn parsed() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| {
        let root = repo_root();
        let tools = root.join("tools/asyncapi");
        let parser = tools.join("node_modules/@asyncapi/parser/package.json");
        assert!(
            parser.is_file(),
            "the AsyncAPI parser is not installed ({} is missing): run scripts/install-deps.sh \
             (it runs `npm ci` in tools/asyncapi; needs Node.js 20 and npm)",
            parser.display()
        );
        let output = Command::new("node")
            .arg(tools.join("validate.js"))
            .arg(root.join(DOCUMENT))
            .output()
            .unwrap_or_else(|err| {
                panic!("cannot run `node` ({err}): Node.js 20 is needed to validate {DOCUMENT}")
            });
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{DOCUMENT} is not valid ({}):\n{stderr}",
            output.status
        );
        // Diagnostics below error level (hints, the newer-version notice)
        // are shown but do not fail the test.
        if !stderr.trim().is_empty() {
            eprintln!("{stderr}");
        }
        serde_json::from_slice(&output.stdout).expect("validate.js prints JSON")
    })
}

fn messages() -> &'static [Value] {
    parsed()["messages"]
        .as_array()
        .expect("validate.js lists messages")
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("a decoded payload serializes")
}

fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a decoded payload serializes")
}

/// Decodes a payload the way its consumer does and gives it back serialized.
type Decoder = fn(&[u8]) -> Result<Value, DecodeError>;

/// The decoder of each message of the document, by message name.
fn decoder(message: &str) -> Option<Decoder> {
    let decoder: Decoder = match message {
        "TelemetryMessage" => |b| TelemetryMessage::decode(b).map(|m| to_value(&m)),
        "ReportedState" => |b| ReportedState::decode(b).map(|m| to_value(&m)),
        "StatusMessage" => |b| StatusMessage::decode(b).map(|m| to_value(&m)),
        "Command" => |b| device::Command::decode(b).map(|m| to_value(&m)),
        "CommandAck" => |b| CommandAck::decode(b).map(|m| to_value(&m)),
        "TelemetryEnvelope" => |b| TelemetryEnvelope::decode(b).map(|m| to_value(&m)),
        "DeviceEvent" => device_event,
        "DeviceCommand" => |b| CommandRecord::decode(b).map(|m| to_value(&m)),
        "DeadLetter" => |b| DeadLetter::decode(b).map(|m| to_value(&m)),
        "DomainEvent" => |b| DomainEvent::decode(b).map(|m| to_value(&m)),
        _ => return None,
    };
    Some(decoder)
}

/// `DeviceEvent::decode` checks the envelope; the device's payload inside
/// passed its own decoder in the bridge before it was wrapped (route.rs),
/// and that is part of the contract the document states.
fn device_event(bytes: &[u8]) -> Result<Value, DecodeError> {
    let event = DeviceEvent::decode(bytes)?;
    match &event.event {
        DeviceEventKind::Status { status } => {
            StatusMessage::decode(&json_bytes(status))?;
        }
        DeviceEventKind::State { state } => {
            ReportedState::decode(&json_bytes(state))?;
        }
        DeviceEventKind::CommandAck { ack } => {
            CommandAck::decode(&json_bytes(ack))?;
        }
        DeviceEventKind::CommandDelivered { .. } => {}
    }
    Ok(to_value(&event))
}

fn id(message: &Value) -> &str {
    message["id"].as_str().expect("message id")
}

#[test]
fn document_is_valid_and_every_message_has_a_decoder() {
    let names: BTreeSet<&str> = messages().iter().map(id).collect();
    for name in &names {
        assert!(
            decoder(name).is_some(),
            "message {name} of {DOCUMENT} has no Rust decoder in contracts/tests/asyncapi.rs"
        );
    }
    for expected in [
        "TelemetryMessage",
        "ReportedState",
        "StatusMessage",
        "Command",
        "CommandAck",
        "TelemetryEnvelope",
        "DeviceEvent",
        "DeviceCommand",
        "DeadLetter",
        "DomainEvent",
    ] {
        assert!(
            names.contains(expected),
            "{DOCUMENT} lacks message {expected}"
        );
    }
}

#[test]
fn channels_are_the_topic_tree_and_the_kafka_topics() {
    let mut by_address: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for message in messages() {
        for address in message["channels"].as_array().expect("channels") {
            by_address
                .entry(address.as_str().expect("address").to_string())
                .or_default()
                .push(id(message));
        }
    }
    let expected = [
        (Channel::Telemetry, "TelemetryMessage"),
        (Channel::State, "ReportedState"),
        (Channel::Status, "StatusMessage"),
        (Channel::Commands, "Command"),
        (Channel::CommandAck, "CommandAck"),
    ];
    assert_eq!(
        expected.len(),
        Channel::ALL.len(),
        "a channel is missing here"
    );
    for (channel, message) in expected {
        let address = format!("{TENANT_ROOT}{{deviceId}}/{}", channel.suffix());
        assert_eq!(
            by_address.get(&address).map(Vec::as_slice),
            Some(&[message][..]),
            "MQTT channel {address}"
        );
    }
    for (topic, message) in [
        (kafka::topics::TELEMETRY, "TelemetryEnvelope"),
        (kafka::topics::DEVICE_EVENTS, "DeviceEvent"),
        (kafka::topics::DEVICE_COMMANDS, "DeviceCommand"),
        (kafka::topics::DEAD_LETTERS, "DeadLetter"),
        (kafka::topics::REGISTRY_EVENTS, "DomainEvent"),
    ] {
        assert_eq!(
            by_address.get(topic).map(Vec::as_slice),
            Some(&[message][..]),
            "Kafka topic {topic}"
        );
    }
    let addresses: BTreeSet<&str> = by_address.keys().map(String::as_str).collect();
    assert_eq!(addresses.len(), 10, "unexpected channels: {addresses:?}");

    // Every Kafka message documents the version header as we write it.
    for message in messages() {
        if message["key"].is_null() {
            continue;
        }
        let header = &message["headers"]["properties"][VERSION_HEADER];
        assert_eq!(
            header["const"],
            json!(WIRE_VERSION.to_string()),
            "{}: header {VERSION_HEADER}",
            id(message)
        );
    }
}

/// The schema named `name` in the document's components.
fn schema(name: &str) -> &'static Value {
    let schema = &parsed()["schemas"][name];
    assert!(schema.is_object(), "{DOCUMENT} lacks schema {name}");
    schema
}

fn strings(values: &Value) -> BTreeSet<String> {
    values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The `const` of field `tag` in each `oneOf` branch of a tagged union.
fn branch_tags(union: &Value, tag: &str) -> BTreeSet<String> {
    fn find(schema: &Value, tag: &str) -> Option<String> {
        schema["properties"][tag]["const"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                schema["allOf"]
                    .as_array()?
                    .iter()
                    .find_map(|part| find(part, tag))
            })
    }
    union["oneOf"]
        .as_array()
        .expect("a tagged union is a oneOf")
        .iter()
        .map(|branch| find(branch, tag).expect("every branch has its tag as a const"))
        .collect()
}

fn serde_tags<T: Serialize>(values: &[T], tag: &str) -> BTreeSet<String> {
    values
        .iter()
        .map(|v| match &to_value(v)[tag] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Examples only reach the variants they show; the enums and tagged unions
/// are compared whole. Each list below is checked by an exhaustive `match`,
/// so a new variant does not compile until it is added here (and then the
/// document must have it too).
#[test]
fn enums_and_tagged_unions_list_every_variant() {
    use warmhouse_contracts::device::AckResult;
    use warmhouse_contracts::domain::{CommandStatus, DomainEventKind, RotatedCredential};
    use warmhouse_contracts::ids::{DeviceId, HomeId};

    let acks = [
        AckResult::Done,
        AckResult::Rejected,
        AckResult::Failed,
        AckResult::Expired,
    ];
    for ack in acks {
        match ack {
            AckResult::Done | AckResult::Rejected | AckResult::Failed | AckResult::Expired => {}
        }
    }
    let names: BTreeSet<String> = acks
        .iter()
        .map(|a| to_value(a).as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(strings(&schema("AckResult")["enum"]), names, "AckResult");

    let statuses = CommandStatus::ALL;
    for status in statuses {
        match status {
            CommandStatus::Queued
            | CommandStatus::Sent
            | CommandStatus::Delivered
            | CommandStatus::Acked
            | CommandStatus::Failed
            | CommandStatus::Expired => {}
        }
    }
    let names: BTreeSet<String> = statuses.iter().map(|s| s.as_str().to_string()).collect();
    assert_eq!(
        strings(&schema("CommandStatus")["enum"]),
        names,
        "CommandStatus"
    );

    let device = DeviceId::new("d").expect("id");
    let home = HomeId::new("h").expect("id");
    let ts = 1_764_000_000_000;
    let kinds = [
        DeviceEventKind::Status {
            status: StatusMessage::new(true, None),
        },
        DeviceEventKind::State {
            state: ReportedState::new(ts, Map::new()),
        },
        DeviceEventKind::CommandAck {
            ack: CommandAck {
                v: 1,
                command_id: "c".into(),
                result: AckResult::Done,
                detail: None,
                ts,
            },
        },
        DeviceEventKind::CommandDelivered {
            command_id: "c".into(),
        },
    ];
    for kind in &kinds {
        match kind {
            DeviceEventKind::Status { .. }
            | DeviceEventKind::State { .. }
            | DeviceEventKind::CommandAck { .. }
            | DeviceEventKind::CommandDelivered { .. } => {}
        }
    }
    let events: Vec<DeviceEvent> = kinds
        .into_iter()
        .map(|k| DeviceEvent::new(device.clone(), ts, k))
        .collect();
    assert_eq!(
        branch_tags(schema("DeviceEvent"), "kind"),
        serde_tags(&events, "kind"),
        "DeviceEvent kinds"
    );

    let domain = [
        DomainEventKind::HomeCreated {
            home_id: home.clone(),
            name: "n".into(),
        },
        DomainEventKind::HomeDeleted {
            home_id: home.clone(),
        },
        DomainEventKind::DeviceRegistered {
            device_id: device.clone(),
            home_id: home.clone(),
            kind: "thermostat".into(),
        },
        DomainEventKind::DeviceDisabled {
            device_id: device.clone(),
            home_id: home.clone(),
        },
        DomainEventKind::DeviceEnabled {
            device_id: device.clone(),
            home_id: home.clone(),
        },
        DomainEventKind::DeviceDeleted {
            device_id: device.clone(),
            home_id: home.clone(),
        },
        DomainEventKind::CredentialsRotated {
            device_id: device.clone(),
            home_id: home.clone(),
            kind: RotatedCredential::Certificate,
        },
        DomainEventKind::DesiredChanged {
            device_id: device.clone(),
            home_id: home.clone(),
            desired: Map::new(),
        },
        DomainEventKind::CommandStatusChanged {
            command_id: "c".into(),
            device_id: device.clone(),
            home_id: home.clone(),
            name: "turn_on".into(),
            status: CommandStatus::Acked,
            detail: None,
        },
    ];
    for kind in &domain {
        match kind {
            DomainEventKind::HomeCreated { .. }
            | DomainEventKind::HomeDeleted { .. }
            | DomainEventKind::DeviceRegistered { .. }
            | DomainEventKind::DeviceDisabled { .. }
            | DomainEventKind::DeviceEnabled { .. }
            | DomainEventKind::DeviceDeleted { .. }
            | DomainEventKind::CredentialsRotated { .. }
            | DomainEventKind::DesiredChanged { .. }
            | DomainEventKind::CommandStatusChanged { .. } => {}
        }
    }
    let events: Vec<DomainEvent> = domain
        .into_iter()
        .map(|k| DomainEvent::new("e".into(), ts, k))
        .collect();
    assert_eq!(
        branch_tags(schema("DomainEvent"), "type"),
        serde_tags(&events, "type"),
        "DomainEvent types"
    );

    // And every variant has an example (whose fields the probes then check).
    for (message, tag, union) in [
        ("DeviceEvent", "kind", "DeviceEvent"),
        ("DomainEvent", "type", "DomainEvent"),
    ] {
        let message = messages()
            .iter()
            .find(|m| id(m) == message)
            .expect("message listed");
        let shown: BTreeSet<String> = message["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["payload"][tag].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            shown,
            branch_tags(schema(union), tag),
            "{union}: every variant needs an example"
        );
    }
}

#[test]
fn examples_decode_with_the_rust_decoders_and_round_trip() {
    let mut failures = Vec::new();
    for message in messages() {
        let name = id(message);
        let Some(decode) = decoder(name) else {
            continue;
        };
        let examples = message["examples"].as_array().expect("examples");
        assert!(!examples.is_empty(), "{name} has no example");
        for example in examples {
            let label = format!("{name}, example {}", example["name"]);
            let payload = &example["payload"];
            match decode(&json_bytes(payload)) {
                Err(err) => failures.push(format!("{label}: the Rust decoder refuses it: {err}")),
                Ok(decoded) => {
                    if let Err(diff) = same(payload, &decoded, &message["payload"], "") {
                        failures.push(format!(
                            "{label}: decoding and encoding again changes it at {diff}\n  \
                             example: {payload}\n  encoded: {decoded}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schemas_match_what_the_decoders_accept() {
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for message in messages() {
        let name = id(message);
        let Some(decode) = decoder(name) else {
            continue;
        };
        let mut probes = Probes::default();
        for example in message["examples"].as_array().expect("examples") {
            probes.walk(
                &[&message["payload"]],
                &example["payload"],
                &example["payload"],
                "",
                "",
            );
        }
        let mut conclusive: BTreeMap<String, bool> = BTreeMap::new();
        for probe in &probes.probes {
            let outcome = decode(&json_bytes(&probe.document));
            // A size limit says nothing about the bound being probed.
            let too_large = matches!(outcome, Err(DecodeError::TooLarge { .. }));
            let seen = conclusive.entry(probe.coverage.clone()).or_insert(false);
            if too_large {
                continue;
            }
            *seen = true;
            match (probe.accept, outcome) {
                (true, Err(err)) => failures.push(format!(
                    "{name}: {}: the schema allows it but the decoder refuses it: {err}",
                    probe.what
                )),
                (false, Ok(_)) => failures.push(format!(
                    "{name}: {}: the schema forbids it but the decoder accepts it",
                    probe.what
                )),
                _ => {}
            }
        }
        for (coverage, seen) in conclusive {
            if !seen {
                failures.push(format!(
                    "{name}: {coverage}: every probe hit the payload size limit; \
                     add a smaller example"
                ));
            }
        }
        for field in probes.declared.difference(&probes.present) {
            failures.push(format!(
                "{name}: field {field} is in the schema but in no example; add one that has it"
            ));
        }
        failures.extend(probes.problems.iter().map(|p| format!("{name}: {p}")));
        report.push(format!("{name}: {} probes", probes.probes.len()));
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A changed copy of an example and whether the schema accepts it.
struct Probe {
    what: String,
    /// Groups the probes of one field and bound across examples.
    coverage: String,
    document: Value,
    accept: bool,
}

#[derive(Default)]
struct Probes {
    probes: Vec<Probe>,
    /// Fields the schemas declare and fields the examples have, as paths
    /// with `*` for array items and map entries.
    declared: BTreeSet<String>,
    present: BTreeSet<String>,
    problems: Vec<String>,
}

/// Largest integer JSON carries exactly through JavaScript.
const SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

impl Probes {
    fn probe(
        &mut self,
        root: &Value,
        pointer: &str,
        generic: &str,
        what: &str,
        accept: bool,
        change: impl FnOnce(&mut Value),
    ) {
        let mut document = root.clone();
        change(
            document
                .pointer_mut(pointer)
                .expect("the probed field exists in the example"),
        );
        self.push(document, generic, what, accept);
    }

    fn push(&mut self, document: Value, generic: &str, what: &str, accept: bool) {
        let field = if generic.is_empty() {
            "(payload)"
        } else {
            generic
        };
        self.probes.push(Probe {
            what: format!("{field}: {what}"),
            coverage: format!("{field}: {what}"),
            document,
            accept,
        });
    }

    fn remove(&mut self, root: &Value, parent: &str, key: &str, generic: &str, accept: bool) {
        let mut document = root.clone();
        if let Some(Value::Object(object)) = document.pointer_mut(parent) {
            object.remove(key);
        }
        let what = if accept {
            "left out (optional)"
        } else {
            "left out (required)"
        };
        self.push(document, generic, what, accept);
    }

    /// Probes `value` (at `pointer` in `root`) against the conjunction of
    /// `schemas`, then its fields, items and entries.
    fn walk(
        &mut self,
        schemas: &[&Value],
        value: &Value,
        root: &Value,
        pointer: &str,
        generic: &str,
    ) {
        let view = match View::new(schemas, value) {
            Ok(view) => view,
            Err(problem) => {
                self.problems.push(format!("{generic}: {problem}"));
                return;
            }
        };
        let fixed = view.get("const").is_some() || view.get("enum").is_some();

        if let Some(wrong) = view
            .get("type")
            .and_then(Value::as_str)
            .and_then(|t| match t {
                "object" => Some(json!([])),
                "array" => Some(json!({})),
                // Not a number: serde takes an integer as a variant index of a
                // tag (`"kind": 1`), a leniency the document need not state.
                "string" => Some(json!(true)),
                "integer" | "number" => Some(json!("1")),
                "boolean" => Some(json!("true")),
                _ => None,
            })
        {
            self.probe(root, pointer, generic, "of another type", false, |v| {
                *v = wrong
            });
        }
        if let Some(constant) = view.get("const") {
            let other = match constant {
                Value::Number(n) => json!(n.as_f64().unwrap_or(0.0) as i64 + 1),
                Value::String(s) => json!(format!("{s}-other")),
                _ => Value::Null,
            };
            self.probe(root, pointer, generic, "other than its const", false, |v| {
                *v = other
            });
        }
        if let Some(values) = view.get("enum").and_then(Value::as_array) {
            for allowed in values.clone() {
                let what = format!("enum value {allowed}");
                self.probe(root, pointer, generic, &what, true, |v| *v = allowed);
            }
            self.probe(root, pointer, generic, "not one of its enum", false, |v| {
                *v = json!("not-a-listed-value")
            });
        }

        match value {
            Value::Number(_) => self.numbers(&view, root, pointer, generic),
            Value::String(_) if !fixed => self.strings(&view, root, pointer, generic),
            Value::Array(items) => {
                self.counts(&view, root, pointer, generic, "Items", |v, n| {
                    let first = v.as_array().and_then(|a| a.first()).cloned();
                    if let (Some(first), Some(array)) = (first, v.as_array_mut()) {
                        array.resize(n, first);
                    }
                });
                if let (Some(first), Some(items)) = (items.first(), view.get("items")) {
                    self.walk(
                        &[items],
                        first,
                        root,
                        &format!("{pointer}/0"),
                        &format!("{generic}[*]"),
                    );
                }
            }
            Value::Object(object) => self.object(&view, object, root, pointer, generic),
            _ => {}
        }
    }

    fn numbers(&mut self, view: &View, root: &Value, pointer: &str, generic: &str) {
        let integer = view.get("type").and_then(Value::as_str) == Some("integer");
        if integer && view.get("const").is_none() {
            self.probe(root, pointer, generic, "with a fraction", false, |v| {
                *v = json!(v.as_f64().unwrap_or(0.0) + 0.5)
            });
        }
        let bound = |key: &str| {
            view.get(key)
                .and_then(Value::as_f64)
                .filter(|b| b.abs() <= SAFE_INTEGER)
                .map(|b| b as i64)
        };
        let mut edge = |what: &str, number: i64, accept: bool| {
            self.probe(root, pointer, generic, what, accept, |v| *v = json!(number));
        };
        // Without a bound the decoder must take what the schema allows.
        let unbounded = view.get("const").is_none() && view.get("enum").is_none();
        if unbounded && bound("minimum").is_none() && bound("exclusiveMinimum").is_none() {
            edge("negative (no minimum)", -1, true);
        }
        if unbounded && bound("maximum").is_none() && bound("exclusiveMaximum").is_none() {
            edge("large (no maximum)", SAFE_INTEGER as i64, true);
        }
        if let Some(min) = bound("minimum") {
            edge("at its minimum", min, true);
            edge("below its minimum", min - 1, false);
        }
        if let Some(max) = bound("maximum") {
            edge("at its maximum", max, true);
            edge("above its maximum", max + 1, false);
        }
        if let Some(min) = bound("exclusiveMinimum") {
            edge("just above its exclusive minimum", min + 1, true);
            edge("at its exclusive minimum", min, false);
        }
        if let Some(max) = bound("exclusiveMaximum") {
            edge("just below its exclusive maximum", max - 1, true);
            edge("at its exclusive maximum", max, false);
        }
    }

    /// Length and alphabet. Filler `a` and the intruder `/` suit every
    /// pattern of the document (ids, metric names, device types).
    fn strings(&mut self, view: &View, root: &Value, pointer: &str, generic: &str) {
        let len = |key: &str| view.get(key).and_then(Value::as_u64).map(|n| n as usize);
        let mut text = |what: &str, text: String, accept: bool| {
            self.probe(root, pointer, generic, what, accept, |v| *v = json!(text));
        };
        let free = view.get("pattern").is_none();
        if free && len("minLength").is_none() {
            text("empty (no minLength)", String::new(), true);
        }
        if free && len("maxLength").is_none() {
            text("long (no maxLength)", "a".repeat(1000), true);
        }
        if let Some(min) = len("minLength").filter(|m| *m > 0) {
            text("at its minimum length", "a".repeat(min), true);
            text("below its minimum length", "a".repeat(min - 1), false);
        }
        if let Some(max) = len("maxLength") {
            text("at its maximum length", "a".repeat(max), true);
            text("over its maximum length", "a".repeat(max + 1), false);
        }
        if view.get("pattern").is_some() {
            text("with a character its pattern excludes", "a/b".into(), false);
        }
    }

    /// minItems/maxItems or minProperties/maxProperties, resizing with
    /// copies of the first element.
    fn counts(
        &mut self,
        view: &View,
        root: &Value,
        pointer: &str,
        generic: &str,
        noun: &str,
        resize: impl Fn(&mut Value, usize),
    ) {
        let count = |key: &str| {
            view.get(&format!("{key}{noun}"))
                .and_then(Value::as_u64)
                .map(|n| n as usize)
        };
        let lower = noun.to_lowercase();
        if let Some(min) = count("min").filter(|m| *m > 0) {
            self.probe(
                root,
                pointer,
                generic,
                &format!("with {min} {lower}"),
                true,
                |v| resize(v, min),
            );
            let fewer = min - 1;
            self.probe(
                root,
                pointer,
                generic,
                &format!("with {fewer} {lower}"),
                false,
                |v| resize(v, fewer),
            );
        }
        if let Some(max) = count("max") {
            self.probe(
                root,
                pointer,
                generic,
                &format!("with {max} {lower}"),
                true,
                |v| resize(v, max),
            );
            let more = max + 1;
            self.probe(
                root,
                pointer,
                generic,
                &format!("with {more} {lower}"),
                false,
                |v| resize(v, more),
            );
        }
    }

    fn object(
        &mut self,
        view: &View,
        object: &Map<String, Value>,
        root: &Value,
        pointer: &str,
        generic: &str,
    ) {
        let properties = view.properties();
        let required = view.required();
        for (key, schemas) in &properties {
            let field = join(generic, key);
            self.declared.insert(field.clone());
            let Some(child) = object.get(key.as_str()) else {
                continue;
            };
            self.present.insert(field.clone());
            self.remove(root, pointer, key, &field, !required.contains(key.as_str()));
            self.walk(
                schemas,
                child,
                root,
                &format!("{pointer}/{}", escape(key)),
                &field,
            );
        }
        let map = view.get("additionalProperties").filter(|s| s.is_object());
        for key in object.keys() {
            if !properties.contains_key(key) && map.is_none() && !properties.is_empty() {
                self.problems.push(format!(
                    "{}: an example has this field but the schema does not declare it",
                    join(generic, key)
                ));
            }
        }
        let Some(entry) = map else {
            return;
        };
        // A map (metric name to value): entries, their count and their keys.
        self.counts(view, root, pointer, generic, "Properties", |v, n| {
            if let Some(map) = v.as_object_mut() {
                let first = map.values().next().cloned().unwrap_or(Value::Null);
                let mut i = 0;
                while map.len() < n {
                    map.insert(format!("m{i}"), first.clone());
                    i += 1;
                }
                while map.len() > n {
                    let last = map.keys().next_back().cloned().unwrap_or_default();
                    map.remove(&last);
                }
            }
        });
        if let Some((key, first)) = object.iter().next() {
            self.walk(
                &[entry],
                first,
                root,
                &format!("{pointer}/{}", escape(key)),
                &format!("{generic}.*"),
            );
        }
        if let Some(names) = view.get("propertyNames") {
            let names = View::new(&[names], &Value::Null).unwrap_or_default();
            let room = view
                .get("maxProperties")
                .and_then(Value::as_u64)
                .is_none_or(|max| (object.len() as u64) < max);
            let key_generic = format!("{generic} (key)");
            let mut add = |what: &str, key: String, accept: bool| {
                let first = object.values().next().cloned().unwrap_or(Value::Null);
                self.probe(root, pointer, &key_generic, what, accept, |v| {
                    if let Some(map) = v.as_object_mut() {
                        map.insert(key, first);
                    }
                });
            };
            if let Some(max) = names.get("maxLength").and_then(Value::as_u64) {
                if room {
                    add("at its maximum length", "a".repeat(max as usize), true);
                }
                add(
                    "over its maximum length",
                    "a".repeat(max as usize + 1),
                    false,
                );
            }
            if names.get("pattern").is_some() {
                add("with a character its pattern excludes", "a/b".into(), false);
            }
        }
    }
}

/// The schemas that apply to one value: `allOf` flattened, the `oneOf`
/// branch whose `const` fields match the value picked.
#[derive(Default)]
struct View<'a> {
    parts: Vec<&'a Value>,
}

impl<'a> View<'a> {
    fn new(schemas: &[&'a Value], value: &Value) -> Result<Self, String> {
        let mut parts = Vec::new();
        for schema in schemas {
            flatten(schema, value, &mut parts)?;
        }
        Ok(Self { parts })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.parts.iter().find_map(|part| part.get(key))
    }

    fn properties(&self) -> BTreeMap<String, Vec<&'a Value>> {
        let mut properties: BTreeMap<String, Vec<&'a Value>> = BTreeMap::new();
        for part in &self.parts {
            if let Some(map) = part.get("properties").and_then(Value::as_object) {
                for (key, schema) in map {
                    properties.entry(key.clone()).or_default().push(schema);
                }
            }
        }
        properties
    }

    fn required(&self) -> BTreeSet<&'a str> {
        self.parts
            .iter()
            .filter_map(|part| part.get("required").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    }
}

fn flatten<'a>(schema: &'a Value, value: &Value, parts: &mut Vec<&'a Value>) -> Result<(), String> {
    parts.push(schema);
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        flatten(part, value, parts)?;
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let matching: Vec<&Value> = branches
            .iter()
            .filter(|branch| consts_match(branch, value))
            .collect();
        match matching.as_slice() {
            [branch] => flatten(branch, value, parts)?,
            _ => {
                return Err(format!(
                    "{} oneOf branches match the example by their const fields; exactly one must",
                    matching.len()
                ))
            }
        }
    }
    Ok(())
}

/// Whether every `const` field of `branch` (its `allOf` parts included)
/// has that value in `value`.
fn consts_match(branch: &Value, value: &Value) -> bool {
    let own = branch
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key, schema)| schema.get("const").map(|c| (key, c)))
        .all(|(key, constant)| value.get(key) == Some(constant));
    own && branch
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|part| consts_match(part, value))
}

fn join(generic: &str, key: &str) -> String {
    if generic.is_empty() {
        key.to_string()
    } else {
        format!("{generic}.{key}")
    }
}

/// JSON Pointer escaping of one reference token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Whether the decoder's output says the same as the example: numbers by
/// value (JSON from YAML has no integer/float distinction), and a field the
/// example leaves out may come back with the schema's `default`.
fn same(example: &Value, decoded: &Value, schema: &Value, at: &str) -> Result<(), String> {
    match (example, decoded) {
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            let items = schema.get("items").unwrap_or(&Value::Null);
            a.iter()
                .zip(b)
                .enumerate()
                .try_for_each(|(i, (a, b))| same(a, b, items, &format!("{at}[{i}]")))
        }
        (Value::Object(a), Value::Object(b)) => {
            let view = View::new(&[schema], example).unwrap_or_default();
            let properties = view.properties();
            let entries = view.get("additionalProperties").unwrap_or(&Value::Null);
            for (key, value) in b {
                let field = join(at, key);
                let field_schemas = properties.get(key);
                match a.get(key) {
                    Some(expected) => {
                        let sub = field_schemas
                            .and_then(|s| s.first().copied())
                            .unwrap_or(entries);
                        same(expected, value, sub, &field)?
                    }
                    None => {
                        let default = field_schemas
                            .into_iter()
                            .flatten()
                            .find_map(|s| s.get("default"));
                        if default != Some(value) {
                            return Err(format!("{field} (added: {value})"));
                        }
                    }
                }
            }
            match a.keys().find(|key| !b.contains_key(*key)) {
                Some(key) => Err(format!("{} (dropped)", join(at, key))),
                None => Ok(()),
            }
        }
        (a, b) if a == b => Ok(()),
        _ => Err(if at.is_empty() {
            "(payload)".into()
        } else {
            at.into()
        }),
    }
}
