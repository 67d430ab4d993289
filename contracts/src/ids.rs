//! Validated identifiers. They end up in MQTT topics, Kafka keys, InfluxDB
//! tags and InfluxQL string literals, so the allowed alphabet is deliberately
//! narrow: ASCII letters, digits, `-` and `_`. Nothing that needs escaping
//! anywhere can get in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} contains {found:?}; only {allowed} are allowed")]
    BadChar {
        what: &'static str,
        found: char,
        allowed: &'static str,
    },
}

fn check(
    value: &str,
    what: &'static str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = value.chars().count();
    if len > max {
        return Err(IdError::TooLong { what, len, max });
    }
    if let Some(found) = value.chars().find(|c| !ok(*c)) {
        return Err(IdError::BadChar {
            what,
            found,
            allowed,
        });
    }
    Ok(())
}

macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $allowed:literal, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check(&value, $what, $max, $allowed, $ok)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn token_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

validated_id!(
    /// A device's identity: its MQTT tenant, its Kafka key and its `device_id` tag.
    DeviceId, "device id", 64, "ASCII letters, digits, '-' and '_'", id_char
);
validated_id!(
    /// A home (installation) that groups devices: the `home_id` tag.
    HomeId, "home id", 64, "ASCII letters, digits, '-' and '_'", id_char
);
validated_id!(
    /// A metric name such as `temperature`; becomes the InfluxDB measurement.
    MetricName, "metric name", 64, "lowercase ASCII letters, digits and '_'", token_char
);
validated_id!(
    /// A device kind such as `thermostat`; open-ended so new hardware needs no
    /// contract change. Well-known kinds are in [`device_types`].
    DeviceType, "device type", 32, "lowercase ASCII letters, digits and '_'", token_char
);

/// Device kinds the simulator and dashboards know about.
pub mod device_types {
    pub const CLIMATE_SENSOR: &str = "climate_sensor";
    pub const THERMOSTAT: &str = "thermostat";
    pub const RELAY: &str = "relay";
    pub const LIGHT: &str = "light";
    pub const GATE: &str = "gate";
    pub const CAMERA: &str = "camera";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        assert_eq!(DeviceId::new("dev-01_a").unwrap().as_str(), "dev-01_a");
        assert!(MetricName::new("temperature").is_ok());
    }

    #[test]
    fn refuses_characters_that_would_need_escaping_anywhere() {
        for bad in [
            "a/b", "a+b", "a#", "a b", "a'b", "a\"b", "a,b", "a=b", "ä", "a\0",
        ] {
            let err = DeviceId::new(bad).unwrap_err();
            assert!(matches!(err, IdError::BadChar { .. }), "{bad:?} gave {err}");
        }
        assert!(MetricName::new("Temperature").is_err());
    }

    #[test]
    fn refuses_empty_and_long() {
        assert_eq!(
            DeviceId::new("").unwrap_err(),
            IdError::Empty { what: "device id" }
        );
        let long = "a".repeat(65);
        assert_eq!(
            DeviceId::new(long).unwrap_err().to_string(),
            "device id is 65 characters long; at most 64 are allowed"
        );
    }

    #[test]
    fn serde_validates() {
        let ok: HomeId = serde_json::from_str("\"home-1\"").unwrap();
        assert_eq!(ok.as_str(), "home-1");
        let err = serde_json::from_str::<HomeId>("\"home/1\"").unwrap_err();
        assert!(err.to_string().contains("home id contains '/'"), "{err}");
    }
}
