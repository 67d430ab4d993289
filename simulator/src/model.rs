//! Device behaviour: a small thermal model of a room, a thermostat with
//! hysteresis, a relay with a load, and the sequencing of samples. All pure
//! and deterministic for a given seed, so it can be unit tested without MQTT.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use warmhouse_contracts::device::{AckResult, Command, CommandAck, ReportedState};
use warmhouse_contracts::ids::{device_types, DeviceType, HomeId, MetricName};
use warmhouse_contracts::telemetry::{Sample, TelemetryMessage};

/// Kinds of device the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// temperature, humidity
    ClimateSensor,
    /// temperature, target_temperature, heating_on (0/1)
    Thermostat,
    /// power_w, on (0/1)
    Relay,
}

impl DeviceKind {
    /// Kind of the `position`-th device of a home: every home starts with a
    /// thermostat, so every home has something to command.
    pub fn for_position(position: usize) -> Self {
        const CYCLE: [DeviceKind; 4] = [
            DeviceKind::Thermostat,
            DeviceKind::ClimateSensor,
            DeviceKind::Relay,
            DeviceKind::ClimateSensor,
        ];
        CYCLE[position % CYCLE.len()]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::ClimateSensor => device_types::CLIMATE_SENSOR,
            DeviceKind::Thermostat => device_types::THERMOSTAT,
            DeviceKind::Relay => device_types::RELAY,
        }
    }

    pub fn device_type(self) -> DeviceType {
        // The contract constants are valid device types (tested below).
        DeviceType::new(self.as_str()).expect("contract device type constants are valid")
    }

    /// Metrics in every sample of this kind.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            DeviceKind::ClimateSensor => &[TEMPERATURE, HUMIDITY],
            DeviceKind::Thermostat => &[TEMPERATURE, TARGET_TEMPERATURE, HEATING_ON],
            DeviceKind::Relay => &[POWER_W, ON],
        }
    }
}

pub const TEMPERATURE: &str = "temperature";
pub const HUMIDITY: &str = "humidity";
pub const TARGET_TEMPERATURE: &str = "target_temperature";
pub const HEATING_ON: &str = "heating_on";
pub const POWER_W: &str = "power_w";
pub const ON: &str = "on";

fn metric(name: &'static str) -> MetricName {
    // Only called with the constants above (tested below).
    MetricName::new(name).expect("metric name constants are valid")
}

/// Time constant (s) of a room warming toward the radiator's supply temperature.
const TAU_HEAT_S: f64 = 900.0;
/// Time constant (s) of a room cooling toward the outdoor temperature.
const TAU_COOL_S: f64 = 3600.0;
/// Heating pushes toward target + this: a radiator is hotter than the room,
/// which is what lets the room actually reach (and pass) the target.
const SUPPLY_ABOVE_TARGET: f64 = 3.0;
/// Thermostat switches on below target - this and off above target + this.
pub const HYSTERESIS: f64 = 0.3;
pub const DEFAULT_TARGET: f64 = 21.0;
/// Accepted range of `set_target_temperature` (the platform's catalog).
pub const TARGET_RANGE: std::ops::RangeInclusive<f64> =
    warmhouse_contracts::commands::TARGET_TEMPERATURE_RANGE;
const HUMIDITY_RANGE: (f64, f64) = (30.0, 60.0);

/// A room's air temperature.
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    pub temperature: f64,
    pub outdoor: f64,
}

impl Room {
    /// Advances `dt_s` seconds: first-order approach to the radiator's supply
    /// temperature while heating, to the outdoor temperature otherwise.
    /// Exact for any step, so batching and odd intervals do not matter.
    pub fn step(&mut self, dt_s: f64, heating_target: Option<f64>) {
        let (goal, tau) = match heating_target {
            Some(target) => (target + SUPPLY_ABOVE_TARGET, TAU_HEAT_S),
            None => (self.outdoor, TAU_COOL_S),
        };
        let alpha = 1.0 - (-dt_s.max(0.0) / tau).exp();
        self.temperature += (goal - self.temperature) * alpha;
    }
}

/// A thermostat: `heating_on` is the switch commands set; `active` is whether
/// the heater runs right now (hysteresis around the target).
#[derive(Debug, Clone, PartialEq)]
pub struct Thermostat {
    pub heating_on: bool,
    pub target: f64,
    pub active: bool,
}

impl Thermostat {
    pub fn new(target: f64) -> Self {
        Self {
            heating_on: true,
            target,
            active: false,
        }
    }

    /// Switches the heater with hysteresis, so it does not chatter around the target.
    pub fn control(&mut self, temperature: f64) {
        if !self.heating_on {
            self.active = false;
        } else if temperature < self.target - HYSTERESIS {
            self.active = true;
        } else if temperature > self.target + HYSTERESIS {
            self.active = false;
        }
    }
}

/// Everything a simulated device knows about itself.
#[derive(Debug, Clone)]
pub struct DeviceModel {
    pub kind: DeviceKind,
    pub room: Room,
    /// The thermostat of a thermostat device; for a climate sensor, the
    /// room's own radiator control, so its room is heated too.
    pub thermostat: Thermostat,
    pub humidity: f64,
    pub relay_on: bool,
    /// Power of the load a relay switches, in W.
    pub load_w: f64,
    rng: StdRng,
}

impl DeviceModel {
    pub fn new(kind: DeviceKind, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let room = Room {
            temperature: rng.random_range(18.0..21.0),
            outdoor: rng.random_range(0.0..10.0),
        };
        let target = match kind {
            DeviceKind::Thermostat => DEFAULT_TARGET,
            _ => rng.random_range(19.5..21.5),
        };
        let mut thermostat = Thermostat::new(target);
        thermostat.control(room.temperature);
        Self {
            kind,
            humidity: rng.random_range(38.0..52.0),
            relay_on: rng.random_bool(0.5),
            load_w: rng.random_range(400.0..2000.0),
            room,
            thermostat,
            rng,
        }
    }

    /// Advances the model by `dt_s` seconds and reads every metric of the kind.
    pub fn sample(&mut self, dt_s: f64) -> BTreeMap<MetricName, f64> {
        let heating = self.thermostat.active.then_some(self.thermostat.target);
        self.room.step(dt_s, heating);
        // Small process noise: drafts, people, sun.
        self.room.temperature += self.noise(0.005);
        self.thermostat.control(self.room.temperature);
        let walk = dt_s.max(0.0).sqrt().min(5.0);
        self.humidity = reflect(
            self.humidity + self.noise(0.25) * walk,
            HUMIDITY_RANGE.0,
            HUMIDITY_RANGE.1,
        );

        let mut values = BTreeMap::new();
        match self.kind {
            DeviceKind::ClimateSensor => {
                let t = self.room.temperature + self.noise(0.05);
                values.insert(metric(TEMPERATURE), round(t, 2));
                values.insert(metric(HUMIDITY), round(self.humidity, 1));
            }
            DeviceKind::Thermostat => {
                let t = self.room.temperature + self.noise(0.05);
                values.insert(metric(TEMPERATURE), round(t, 2));
                values.insert(metric(TARGET_TEMPERATURE), self.thermostat.target);
                values.insert(metric(HEATING_ON), bit(self.thermostat.active));
            }
            DeviceKind::Relay => {
                let power = if self.relay_on {
                    self.load_w * (1.0 + self.noise(0.02))
                } else {
                    // Standby draw of the relay itself.
                    0.4 + self.noise(0.05)
                };
                values.insert(metric(POWER_W), round(power, 1));
                values.insert(metric(ON), bit(self.relay_on));
            }
        }
        values
    }

    /// The device's side of the shadow.
    pub fn reported(&self) -> Map<String, Value> {
        let mut reported = Map::new();
        match self.kind {
            DeviceKind::Thermostat => {
                reported.insert(HEATING_ON.into(), Value::Bool(self.thermostat.heating_on));
                reported.insert("heating_active".into(), Value::Bool(self.thermostat.active));
                reported.insert(TARGET_TEMPERATURE.into(), self.thermostat.target.into());
            }
            DeviceKind::Relay => {
                reported.insert(ON.into(), Value::Bool(self.relay_on));
            }
            DeviceKind::ClimateSensor => {}
        }
        reported.insert(
            "firmware".into(),
            Value::String(concat!("warmhouse-sim/", env!("CARGO_PKG_VERSION")).into()),
        );
        reported
    }

    pub fn reported_state(&self, ts: i64) -> ReportedState {
        ReportedState::new(ts, self.reported())
    }

    fn noise(&mut self, amplitude: f64) -> f64 {
        (self.rng.random::<f64>() * 2.0 - 1.0) * amplitude
    }
}

fn bit(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Keeps a random walk inside [lo, hi] by reflecting at the bounds.
fn reflect(value: f64, lo: f64, hi: f64) -> f64 {
    let v = if value < lo { 2.0 * lo - value } else { value };
    let v = if v > hi { 2.0 * hi - v } else { v };
    v.clamp(lo, hi)
}

/// Stable seed from a device id (FNV-1a), so a device behaves the same in
/// every run and on every platform.
pub fn seed_for(device_id: &str) -> u64 {
    device_id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Hands out `seq` (1, 2, 3, ... per device, never repeated) and device
/// timestamps for the samples of each message.
#[derive(Debug, Clone)]
pub struct Sequencer {
    next_seq: u64,
    last_ts: Option<i64>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sequencer {
    pub fn new() -> Self {
        Self {
            next_seq: 1,
            last_ts: None,
        }
    }

    /// `(seq, ts)` for `count` samples read at regular times between the
    /// previous message (or one interval ago) and `now_ms`. Timestamps are real
    /// clock milliseconds, never in the future and never decreasing, even if
    /// the wall clock steps back; equal timestamps still differ in `seq`.
    pub fn stamps(&mut self, count: usize, now_ms: i64, interval_ms: u64) -> Vec<(u64, i64)> {
        let prev = self
            .last_ts
            .unwrap_or_else(|| now_ms.saturating_sub(interval_ms as i64));
        let end = now_ms.max(prev);
        let span = end - prev;
        let count_i = count.max(1) as i64;
        let stamps: Vec<(u64, i64)> = (0..count)
            .map(|i| {
                let seq = self.next_seq + i as u64;
                (seq, prev + span * (i as i64 + 1) / count_i)
            })
            .collect();
        self.next_seq += count as u64;
        if count > 0 {
            self.last_ts = Some(end);
        }
        stamps
    }
}

/// A device: model plus sequencing, producing telemetry messages.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub home_id: HomeId,
    pub device_type: DeviceType,
    pub model: DeviceModel,
    pub sequencer: Sequencer,
    last_ts: Option<i64>,
}

impl SimDevice {
    pub fn new(home_id: HomeId, kind: DeviceKind, seed: u64) -> Self {
        Self {
            home_id,
            device_type: kind.device_type(),
            model: DeviceModel::new(kind, seed),
            sequencer: Sequencer::new(),
            last_ts: None,
        }
    }

    /// The next message: `samples` samples taken since the previous message.
    pub fn next_message(
        &mut self,
        samples: usize,
        now_ms: i64,
        interval_ms: u64,
    ) -> TelemetryMessage {
        let stamps = self.sequencer.stamps(samples, now_ms, interval_ms);
        let samples = stamps
            .into_iter()
            .map(|(seq, ts)| {
                let dt_s = self.last_ts.map_or(interval_ms as f64 / 1000.0, |last| {
                    (ts - last) as f64 / 1000.0
                });
                self.last_ts = Some(ts);
                Sample {
                    seq,
                    ts,
                    values: self.model.sample(dt_s),
                }
            })
            .collect();
        TelemetryMessage::new(self.home_id.clone(), self.device_type.clone(), samples)
    }
}

/// Size in bytes of the largest message of `samples` samples any kind can
/// produce (worst-case number widths), to check it against the payload limit.
pub fn largest_message_bytes(samples: usize) -> usize {
    let Ok(home) = HomeId::new("h".repeat(HomeId::MAX_LEN)) else {
        return usize::MAX;
    };
    [
        DeviceKind::ClimateSensor,
        DeviceKind::Thermostat,
        DeviceKind::Relay,
    ]
    .into_iter()
    .map(|kind| {
        let values: BTreeMap<MetricName, f64> = kind
            .metrics()
            .iter()
            .map(|m| (metric(m), -1234.5678))
            .collect();
        let sample = Sample {
            seq: u64::from(u32::MAX) * 1000,
            ts: 4_102_444_799_999,
            values,
        };
        TelemetryMessage::new(home.clone(), kind.device_type(), vec![sample; samples])
            .to_json()
            .len()
    })
    .max()
    .unwrap_or(usize::MAX)
}

pub use warmhouse_contracts::commands::{SET_TARGET_TEMPERATURE, TURN_OFF, TURN_ON};

/// What a command did.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    pub ack: CommandAck,
    /// The command was seen before (QoS 1 redelivery): answered again, not re-applied.
    pub duplicate: bool,
}

/// Applies a command to the model and says how it went. Expiry is checked
/// first: an expired command must not act, whatever it is.
pub fn apply_command(model: &mut DeviceModel, command: &Command, now_ms: i64) -> CommandAck {
    let (result, detail) = if now_ms > command.expires_at_ms {
        (
            AckResult::Expired,
            Some(format!(
                "received at {now_ms}, after it expired at {}",
                command.expires_at_ms
            )),
        )
    } else {
        match execute(model, command) {
            Ok(()) => (AckResult::Done, None),
            Err(reason) => (AckResult::Rejected, Some(reason)),
        }
    };
    CommandAck {
        v: u64::from(warmhouse_contracts::WIRE_VERSION),
        command_id: command.command_id.clone(),
        result,
        detail,
        ts: now_ms,
    }
}

fn execute(model: &mut DeviceModel, command: &Command) -> Result<(), String> {
    let kind = model.kind;
    match (command.name.as_str(), kind) {
        (TURN_ON | TURN_OFF, DeviceKind::Thermostat) => {
            model.thermostat.heating_on = command.name == TURN_ON;
            model.thermostat.control(model.room.temperature);
            Ok(())
        }
        (TURN_ON | TURN_OFF, DeviceKind::Relay) => {
            model.relay_on = command.name == TURN_ON;
            Ok(())
        }
        (SET_TARGET_TEMPERATURE, DeviceKind::Thermostat) => {
            let target = warmhouse_contracts::commands::target_temperature(&command.params)?;
            model.thermostat.target = target;
            model.thermostat.control(model.room.temperature);
            Ok(())
        }
        (TURN_ON | TURN_OFF | SET_TARGET_TEMPERATURE, _) => Err(format!(
            "a {} does not support `{}`",
            kind.as_str(),
            command.name
        )),
        (other, _) => Err(format!(
            "unknown command `{other}`; this device understands {}",
            supported_commands(kind)
        )),
    }
}

fn supported_commands(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Thermostat => "turn_on, turn_off, set_target_temperature",
        DeviceKind::Relay => "turn_on, turn_off",
        DeviceKind::ClimateSensor => "no commands",
    }
}

/// Answers to recent commands, so a redelivered command (QoS 1 is
/// at-least-once) is acknowledged again without being applied twice.
#[derive(Debug, Clone, Default)]
pub struct RecentCommands {
    answers: VecDeque<(String, AckResult, Option<String>)>,
}

impl RecentCommands {
    const CAPACITY: usize = 128;

    /// Applies `command` unless it was already answered.
    pub fn handle(
        &mut self,
        model: &mut DeviceModel,
        command: &Command,
        now_ms: i64,
    ) -> CommandOutcome {
        if let Some((_, result, detail)) = self
            .answers
            .iter()
            .find(|(id, _, _)| *id == command.command_id)
        {
            return CommandOutcome {
                ack: CommandAck {
                    v: u64::from(warmhouse_contracts::WIRE_VERSION),
                    command_id: command.command_id.clone(),
                    result: *result,
                    detail: detail.clone(),
                    ts: now_ms,
                },
                duplicate: true,
            };
        }
        let ack = apply_command(model, command, now_ms);
        if self.answers.len() == Self::CAPACITY {
            self.answers.pop_front();
        }
        self.answers
            .push_back((ack.command_id.clone(), ack.result, ack.detail.clone()));
        CommandOutcome {
            ack,
            duplicate: false,
        }
    }
}

/// Best effort for a payload that is not a valid [`Command`]: if it names a
/// command id, the sender deserves a rejection rather than silence.
pub fn reject_undecodable(payload: &[u8], reason: &str, now_ms: i64) -> Option<CommandAck> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let command_id = value.get("command_id")?.as_str()?;
    if command_id.is_empty() {
        return None;
    }
    Some(CommandAck {
        v: u64::from(warmhouse_contracts::WIRE_VERSION),
        command_id: command_id.to_string(),
        result: AckResult::Rejected,
        detail: Some(format!("cannot decode the command: {reason}")),
        ts: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    #[test]
    fn constants_are_valid_names() {
        for kind in [
            DeviceKind::ClimateSensor,
            DeviceKind::Thermostat,
            DeviceKind::Relay,
        ] {
            let _ = kind.device_type();
            for m in kind.metrics() {
                let _ = metric(m);
            }
        }
    }

    #[test]
    fn heating_raises_temperature_toward_target() {
        let mut room = Room {
            temperature: 17.0,
            outdoor: 5.0,
        };
        let mut last = room.temperature;
        for _ in 0..60 {
            room.step(10.0, Some(21.0));
            assert!(room.temperature > last, "heating must warm the room");
            last = room.temperature;
        }
        // After long enough it passes the target (the radiator is hotter),
        // but never the supply temperature.
        room.step(10_000.0, Some(21.0));
        assert!(room.temperature > 21.0 && room.temperature < 21.0 + SUPPLY_ABOVE_TARGET);
    }

    #[test]
    fn without_heating_the_room_cools_toward_outdoor() {
        let mut room = Room {
            temperature: 21.0,
            outdoor: 5.0,
        };
        let mut last = room.temperature;
        for _ in 0..60 {
            room.step(60.0, None);
            assert!(room.temperature < last);
            assert!(room.temperature > 5.0);
            last = room.temperature;
        }
        room.step(1e6, None);
        assert!((room.temperature - 5.0).abs() < 0.01);
        // A zero step changes nothing (batched samples in one millisecond).
        let before = room.clone();
        room.step(0.0, Some(21.0));
        assert_eq!(room, before);
    }

    #[test]
    fn thermostat_has_hysteresis() {
        let mut t = Thermostat::new(21.0);
        t.control(20.5);
        assert!(t.active, "below target - hysteresis: on");
        t.control(21.2);
        assert!(t.active, "inside the band it keeps heating");
        t.control(21.4);
        assert!(!t.active, "above target + hysteresis: off");
        t.control(20.9);
        assert!(!t.active, "inside the band it stays off");
        t.heating_on = false;
        t.control(10.0);
        assert!(!t.active, "switched off means off");
    }

    #[test]
    fn thermostat_cycles_around_its_target() {
        let mut model = DeviceModel::new(DeviceKind::Thermostat, 7);
        model.room.temperature = 15.0;
        let mut temps = Vec::new();
        let mut switches = 0;
        let mut was = model.thermostat.active;
        for _ in 0..(6 * 3600 / 10) {
            let values = model.sample(10.0);
            temps.push(values[&metric(TEMPERATURE)]);
            if model.thermostat.active != was {
                switches += 1;
                was = model.thermostat.active;
            }
        }
        let settled = &temps[temps.len() / 2..];
        let lo = settled.iter().cloned().fold(f64::MAX, f64::min);
        let hi = settled.iter().cloned().fold(f64::MIN, f64::max);
        assert!(lo > 20.0 && hi < 22.0, "settled between {lo} and {hi}");
        assert!(switches >= 4, "heater switched {switches} times");
    }

    #[test]
    fn samples_hold_the_metrics_of_the_kind_with_believable_values() {
        for (kind, seed) in [
            (DeviceKind::ClimateSensor, 1),
            (DeviceKind::Thermostat, 2),
            (DeviceKind::Relay, 3),
        ] {
            let mut model = DeviceModel::new(kind, seed);
            for _ in 0..1000 {
                let values = model.sample(1.0);
                let names: Vec<&str> = values.keys().map(MetricName::as_str).collect();
                let mut expected = kind.metrics().to_vec();
                expected.sort();
                assert_eq!(names, expected);
                if let Some(h) = values.get(&metric(HUMIDITY)) {
                    assert!((30.0..=60.0).contains(h), "humidity {h}");
                }
                if let Some(t) = values.get(&metric(TEMPERATURE)) {
                    assert!((0.0..=30.0).contains(t), "temperature {t}");
                }
                for flag in [HEATING_ON, ON] {
                    if let Some(v) = values.get(&metric(flag)) {
                        assert!(*v == 0.0 || *v == 1.0);
                    }
                }
                if let Some(p) = values.get(&metric(POWER_W)) {
                    assert!(*p >= 0.0 && *p < 2100.0, "power {p}");
                }
            }
        }
    }

    #[test]
    fn same_seed_same_device() {
        let mut a = DeviceModel::new(DeviceKind::Thermostat, seed_for("home-0001-dev-01"));
        let mut b = DeviceModel::new(DeviceKind::Thermostat, seed_for("home-0001-dev-01"));
        assert_eq!(a.sample(1.0), b.sample(1.0));
        assert_ne!(seed_for("home-0001-dev-01"), seed_for("home-0001-dev-02"));
    }

    #[test]
    fn seq_is_unique_and_timestamps_are_real_and_ordered() {
        let mut device = SimDevice::new(HomeId::new("h").unwrap(), DeviceKind::Thermostat, 1);
        let mut seqs = Vec::new();
        let mut stamps = Vec::new();
        // Messages of 10 samples every 1000 ms, then a burst in one millisecond
        // and a clock that steps back.
        let nows = [
            NOW,
            NOW + 1000,
            NOW + 2000,
            NOW + 2000,
            NOW + 2001,
            NOW + 1500,
        ];
        let mut previous_now = i64::MIN;
        for now in nows {
            let message = device.next_message(10, now, 1000);
            assert_eq!(message.samples.len(), 10);
            for sample in &message.samples {
                assert!(sample.ts <= now.max(previous_now), "ts in the future");
                assert!(sample.ts >= NOW - 1000);
                seqs.push(sample.seq);
                stamps.push(sample.ts);
            }
            previous_now = previous_now.max(now);
            // The contract accepts what we produce.
            TelemetryMessage::decode(&message.to_json()).unwrap();
        }
        assert_eq!(
            seqs,
            (1..=60).collect::<Vec<u64>>(),
            "seq starts at 1, no gaps, no repeats"
        );
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
        // Samples of one regular message are spread over the interval.
        assert_eq!(stamps[9], NOW);
        assert_eq!(stamps[0], NOW - 900);
        assert_eq!(stamps[19], NOW + 1000);
        assert_eq!(stamps[10], NOW + 100);
    }

    #[test]
    fn single_sample_messages_use_now() {
        let mut s = Sequencer::new();
        assert_eq!(s.stamps(1, NOW, 1000), vec![(1, NOW)]);
        assert_eq!(s.stamps(1, NOW + 5, 1000), vec![(2, NOW + 5)]);
        assert_eq!(s.stamps(1, NOW + 5, 1000), vec![(3, NOW + 5)]);
    }

    #[test]
    fn largest_message_is_estimated_from_above() {
        let mut device = SimDevice::new(
            HomeId::new("h".repeat(64)).unwrap(),
            DeviceKind::Thermostat,
            1,
        );
        let real = device.next_message(100, NOW, 1000).to_json().len();
        assert!(largest_message_bytes(100) >= real);
        assert!(largest_message_bytes(100) < 2 * real);
    }

    fn command(name: &str, params: Value, expires_at_ms: i64) -> Command {
        Command {
            v: 1,
            command_id: format!("c-{name}"),
            name: name.to_string(),
            params: params.as_object().cloned().unwrap_or_default(),
            issued_at_ms: NOW - 10,
            expires_at_ms,
        }
    }

    #[test]
    fn thermostat_commands() {
        let mut model = DeviceModel::new(DeviceKind::Thermostat, 1);
        model.room.temperature = 18.0;
        let ack = apply_command(&mut model, &command(TURN_OFF, Value::Null, NOW + 1000), NOW);
        assert_eq!(
            (ack.result, ack.command_id.as_str(), ack.ts),
            (AckResult::Done, "c-turn_off", NOW)
        );
        assert!(!model.thermostat.heating_on && !model.thermostat.active);
        assert_eq!(model.reported()[HEATING_ON], Value::Bool(false));

        let ack = apply_command(&mut model, &command(TURN_ON, Value::Null, NOW + 1000), NOW);
        assert_eq!(ack.result, AckResult::Done);
        assert!(
            model.thermostat.heating_on && model.thermostat.active,
            "cold room: heats at once"
        );

        let set = command(
            SET_TARGET_TEMPERATURE,
            serde_json::json!({"temperature": 22.5}),
            NOW + 1000,
        );
        assert_eq!(apply_command(&mut model, &set, NOW).result, AckResult::Done);
        assert_eq!(model.thermostat.target, 22.5);
        assert_eq!(
            model.reported()[TARGET_TEMPERATURE],
            serde_json::json!(22.5)
        );
        assert_eq!(model.sample(1.0)[&metric(TARGET_TEMPERATURE)], 22.5);
    }

    #[test]
    fn bad_params_unknown_and_unsupported_commands_are_rejected() {
        let mut model = DeviceModel::new(DeviceKind::Thermostat, 1);
        for params in [
            serde_json::json!({}),
            serde_json::json!({"temperature": "warm"}),
            serde_json::json!({"temperature": 99}),
        ] {
            let ack = apply_command(
                &mut model,
                &command(SET_TARGET_TEMPERATURE, params, NOW + 1),
                NOW,
            );
            assert_eq!(ack.result, AckResult::Rejected);
            assert!(ack.detail.unwrap().contains("params.temperature"));
        }
        assert_eq!(model.thermostat.target, DEFAULT_TARGET);

        let ack = apply_command(
            &mut model,
            &command("self_destruct", Value::Null, NOW + 1),
            NOW,
        );
        assert_eq!(ack.result, AckResult::Rejected);
        assert!(ack
            .detail
            .unwrap()
            .contains("unknown command `self_destruct`"));

        let mut sensor = DeviceModel::new(DeviceKind::ClimateSensor, 1);
        let ack = apply_command(&mut sensor, &command(TURN_ON, Value::Null, NOW + 1), NOW);
        assert_eq!(ack.result, AckResult::Rejected);
        assert!(ack
            .detail
            .unwrap()
            .contains("climate_sensor does not support"));
    }

    #[test]
    fn relay_commands_switch_the_load() {
        let mut model = DeviceModel::new(DeviceKind::Relay, 1);
        apply_command(&mut model, &command(TURN_ON, Value::Null, NOW + 1), NOW);
        assert!(model.relay_on);
        assert!(model.sample(1.0)[&metric(POWER_W)] > 300.0);
        apply_command(&mut model, &command(TURN_OFF, Value::Null, NOW + 1), NOW);
        let values = model.sample(1.0);
        assert!(values[&metric(POWER_W)] < 1.0);
        assert_eq!(values[&metric(ON)], 0.0);
        assert_eq!(model.reported()[ON], Value::Bool(false));
    }

    #[test]
    fn expired_commands_do_nothing() {
        let mut model = DeviceModel::new(DeviceKind::Relay, 1);
        model.relay_on = false;
        let ack = apply_command(&mut model, &command(TURN_ON, Value::Null, NOW - 1), NOW);
        assert_eq!(ack.result, AckResult::Expired);
        assert!(!model.relay_on);
        // Exactly at the deadline is still in time.
        let ack = apply_command(&mut model, &command(TURN_ON, Value::Null, NOW), NOW);
        assert_eq!(ack.result, AckResult::Done);
    }

    #[test]
    fn redelivered_commands_are_answered_but_not_reapplied() {
        let mut model = DeviceModel::new(DeviceKind::Thermostat, 1);
        let mut recent = RecentCommands::default();
        let set = command(
            SET_TARGET_TEMPERATURE,
            serde_json::json!({"temperature": 19}),
            NOW + 10,
        );
        let first = recent.handle(&mut model, &set, NOW);
        assert!(!first.duplicate);
        model.thermostat.target = 25.0;
        let again = recent.handle(&mut model, &set, NOW + 5);
        assert!(again.duplicate);
        assert_eq!(again.ack.result, AckResult::Done);
        assert_eq!(again.ack.ts, NOW + 5);
        assert_eq!(model.thermostat.target, 25.0, "not applied twice");
    }

    #[test]
    fn undecodable_commands_with_an_id_are_rejected() {
        let ack = reject_undecodable(br#"{"command_id":"c9","name":5}"#, "bad name", NOW).unwrap();
        assert_eq!(ack.result, AckResult::Rejected);
        assert_eq!(ack.command_id, "c9");
        assert!(reject_undecodable(b"not json", "x", NOW).is_none());
        assert!(reject_undecodable(br#"{"command_id":""}"#, "x", NOW).is_none());
    }
}
