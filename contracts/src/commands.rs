//! The commands devices understand, their parameters, and what each one
//! means for the device's desired state. The registry validates requests
//! against this catalog; devices (and the simulator) execute it.

use serde_json::{Map, Value};

use crate::ids::device_types;

pub const TURN_ON: &str = "turn_on";
pub const TURN_OFF: &str = "turn_off";
pub const SET_TARGET_TEMPERATURE: &str = "set_target_temperature";

/// Every command name the platform accepts.
pub const NAMES: &[&str] = &[TURN_ON, TURN_OFF, SET_TARGET_TEMPERATURE];

/// Accepted range of `set_target_temperature`'s `temperature`, in °C.
pub const TARGET_TEMPERATURE_RANGE: std::ops::RangeInclusive<f64> = 5.0..=30.0;

/// Shadow keys the commands set.
pub mod state_keys {
    pub const HEATING_ON: &str = "heating_on";
    pub const TARGET_TEMPERATURE: &str = "target_temperature";
    pub const ON: &str = "on";
}

/// Checks a command's name and parameters; the error says what is wrong.
pub fn validate(name: &str, params: &Map<String, Value>) -> Result<(), String> {
    match name {
        TURN_ON | TURN_OFF => {
            if let Some(extra) = params.keys().next() {
                return Err(format!("`{name}` takes no parameters, got `{extra}`"));
            }
            Ok(())
        }
        SET_TARGET_TEMPERATURE => {
            target_temperature(params)?;
            if let Some(extra) = params.keys().find(|k| k.as_str() != "temperature") {
                return Err(format!("unknown parameter `{extra}`"));
            }
            Ok(())
        }
        other => Err(format!(
            "unknown command `{other}`; known commands: {}",
            NAMES.join(", ")
        )),
    }
}

/// The `temperature` of `set_target_temperature`, checked.
pub fn target_temperature(params: &Map<String, Value>) -> Result<f64, String> {
    params
        .get("temperature")
        .and_then(Value::as_f64)
        .filter(|t| TARGET_TEMPERATURE_RANGE.contains(t))
        .ok_or_else(|| {
            format!(
                "params.temperature must be a number from {} to {} (°C), got {}",
                TARGET_TEMPERATURE_RANGE.start(),
                TARGET_TEMPERATURE_RANGE.end(),
                params
                    .get("temperature")
                    .map_or_else(|| "nothing".to_string(), Value::to_string)
            )
        })
}

/// What a valid command asks a device of `device_type` to become: the keys
/// of its desired state it sets. Empty when the kind has no such state.
pub fn desired_effect(
    device_type: &str,
    name: &str,
    params: &Map<String, Value>,
) -> Map<String, Value> {
    let mut desired = Map::new();
    match (device_type, name) {
        (device_types::THERMOSTAT, TURN_ON | TURN_OFF) => {
            desired.insert(state_keys::HEATING_ON.into(), Value::Bool(name == TURN_ON));
        }
        (device_types::THERMOSTAT, SET_TARGET_TEMPERATURE) => {
            if let Ok(t) = target_temperature(params) {
                desired.insert(state_keys::TARGET_TEMPERATURE.into(), t.into());
            }
        }
        (device_types::RELAY, TURN_ON | TURN_OFF) => {
            desired.insert(state_keys::ON.into(), Value::Bool(name == TURN_ON));
        }
        _ => {}
    }
    desired
}

/// The keys of `desired` whose value `reported` does not (yet) have.
pub fn delta(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    desired
        .iter()
        .filter(|(key, want)| {
            !reported
                .get(*key)
                .is_some_and(|have| same_value(have, want))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Numbers compare by value (`21` equals `21.0`); everything else exactly.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn validates_names_and_parameters() {
        assert!(validate(TURN_ON, &Map::new()).is_ok());
        assert!(validate(TURN_OFF, &params(json!({"x": 1})))
            .unwrap_err()
            .contains("no parameters"));
        assert!(validate(
            SET_TARGET_TEMPERATURE,
            &params(json!({"temperature": 21.5}))
        )
        .is_ok());
        for bad in [
            json!({}),
            json!({"temperature": "hot"}),
            json!({"temperature": 99}),
        ] {
            let err = validate(SET_TARGET_TEMPERATURE, &params(bad)).unwrap_err();
            assert!(err.contains("params.temperature"), "{err}");
        }
        let err = validate(
            SET_TARGET_TEMPERATURE,
            &params(json!({"temperature": 20, "unit": "F"})),
        )
        .unwrap_err();
        assert!(err.contains("unit"), "{err}");
        assert!(validate("self_destruct", &Map::new())
            .unwrap_err()
            .contains("known commands"));
    }

    #[test]
    fn desired_effect_and_delta() {
        let on = desired_effect(device_types::THERMOSTAT, TURN_ON, &Map::new());
        assert_eq!(Value::Object(on.clone()), json!({"heating_on": true}));
        let target = desired_effect(
            device_types::THERMOSTAT,
            SET_TARGET_TEMPERATURE,
            &params(json!({"temperature": 22})),
        );
        assert_eq!(Value::Object(target), json!({"target_temperature": 22.0}));
        assert!(desired_effect(device_types::CLIMATE_SENSOR, TURN_ON, &Map::new()).is_empty());
        let desired = params(json!({"heating_on": true, "target_temperature": 22}));
        let reported =
            params(json!({"heating_on": true, "target_temperature": 21.0, "firmware": "x"}));
        assert_eq!(
            Value::Object(delta(&desired, &reported)),
            json!({"target_temperature": 22})
        );
        let reported = params(json!({"heating_on": true, "target_temperature": 22.0}));
        assert!(delta(&desired, &reported).is_empty());
    }
}
