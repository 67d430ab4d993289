//! Request and response bodies, and the validation of what clients send.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use warmhouse_contracts::ids::{DeviceId, DeviceType, HomeId};

use crate::problem::Problem;

/// Longest `name` accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest `address` accepted, in characters.
pub const MAX_ADDRESS_CHARS: usize = 500;
/// Largest `metadata` object accepted, serialised, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Most capabilities one device may declare.
pub const MAX_CAPABILITIES: usize = 64;
/// Capabilities the dashboards know; others are accepted when they are
/// tokens (`[a-z][a-z0-9_]{0,63}`), so new hardware needs no release.
pub const KNOWN_CAPABILITIES: &[&str] = &[
    "temperature",
    "humidity",
    "co2",
    "setpoint",
    "switch",
    "dimming",
    "color",
    "open_close",
    "video",
    "motion",
    "battery",
];

/// Lifecycle of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Registered, not yet seen online.
    Provisioning,
    Active,
    /// Kept for history; its data is refused.
    Disabled,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "provisioning" => Some(Self::Provisioning),
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// A home (installation) grouping devices.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Home {
    pub id: String,
    pub name: String,
    pub address: Option<String>,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub timezone: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A registered device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Device {
    pub id: String,
    pub home_id: String,
    /// Device type, e.g. `thermostat`.
    pub kind: String,
    pub name: String,
    pub capabilities: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    #[sqlx(try_from = "String")]
    pub status: DeviceStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<String> for DeviceStatus {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value).ok_or_else(|| format!("unknown device status {value:?}"))
    }
}

/// A page of homes, by id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HomePage {
    pub items: Vec<Home>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A page of devices, by id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DevicePage {
    pub items: Vec<Device>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Body of `POST /api/v1/homes`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "home-a", "name": "Lake house", "timezone": "Europe/Berlin"}))]
pub struct NewHome {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    /// Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// A JSON object (at most 16 KiB); default `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Body of `PATCH /api/v1/homes/{id}`: only the fields given change;
/// `"address": null` clears the address.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HomePatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub address: Option<Option<String>>,
    #[serde(default)]
    pub timezone: Option<String>,
    /// Replaces the whole metadata object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Body of `POST /api/v1/devices`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "id": "dev-1", "home_id": "home-a", "kind": "thermostat", "name": "Hall",
    "capabilities": ["temperature", "setpoint"]
}))]
pub struct NewDevice {
    pub id: String,
    pub home_id: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Default `provisioning`.
    #[serde(default)]
    pub status: Option<DeviceStatus>,
}

/// Body of `PATCH /api/v1/devices/{id}`: only the fields given change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// Moves the device to another (existing) home.
    #[serde(default)]
    pub home_id: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Replaces the whole list.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Replaces the whole metadata object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub status: Option<DeviceStatus>,
}

/// Tells an absent field (`None`) from an explicit null (`Some(None)`).
fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

pub fn home_id(field: &str, value: &str) -> Result<HomeId, Problem> {
    HomeId::new(value).map_err(|e| Problem::invalid_field(field, e.to_string()))
}

pub fn device_id(field: &str, value: &str) -> Result<DeviceId, Problem> {
    DeviceId::new(value).map_err(|e| Problem::invalid_field(field, e.to_string()))
}

pub fn kind(value: &str) -> Result<DeviceType, Problem> {
    DeviceType::new(value).map_err(|e| Problem::invalid_field("kind", e.to_string()))
}

pub fn name(field: &str, value: &str) -> Result<(), Problem> {
    let len = value.chars().count();
    if len == 0 || len > MAX_NAME_CHARS || value.trim().is_empty() {
        return Err(Problem::invalid_field(
            field,
            format!("{field} must be 1 to {MAX_NAME_CHARS} characters, not blank; got {len}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Problem::invalid_field(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

pub fn address(value: &str) -> Result<(), Problem> {
    let len = value.chars().count();
    if len > MAX_ADDRESS_CHARS {
        return Err(Problem::invalid_field(
            "address",
            format!("address must be at most {MAX_ADDRESS_CHARS} characters; got {len}"),
        ));
    }
    Ok(())
}

/// IANA names (`Europe/Berlin`, `UTC`, `Etc/GMT+2`) by shape; there is no
/// time zone database in the registry to check them against.
pub fn timezone(value: &str) -> Result<(), Problem> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.starts_with(|c: char| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Problem::invalid_field(
            "timezone",
            format!("timezone must be an IANA time zone name such as Europe/Berlin; got {value:?}"),
        ))
    }
}

pub fn metadata(value: &Value) -> Result<(), Problem> {
    if !value.is_object() {
        return Err(Problem::invalid_field(
            "metadata",
            "metadata must be a JSON object",
        ));
    }
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(Problem::invalid_field(
            "metadata",
            format!("metadata must be at most {MAX_METADATA_BYTES} bytes serialised; got {size}"),
        ));
    }
    Ok(())
}

pub fn capabilities(values: &[String]) -> Result<(), Problem> {
    if values.len() > MAX_CAPABILITIES {
        return Err(Problem::invalid_field(
            "capabilities",
            format!(
                "at most {MAX_CAPABILITIES} capabilities; got {}",
                values.len()
            ),
        ));
    }
    for (i, value) in values.iter().enumerate() {
        let token = value.len() <= 64
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !(KNOWN_CAPABILITIES.contains(&value.as_str()) || token) {
            return Err(Problem::invalid_field(
                &format!("capabilities[{i}]"),
                format!(
                    "capability {value:?} must be a known one ({}) or match [a-z][a-z0-9_]{{0,63}}",
                    KNOWN_CAPABILITIES.join(", ")
                ),
            ));
        }
        if values[..i].contains(value) {
            return Err(Problem::invalid_field(
                &format!("capabilities[{i}]"),
                format!("capability {value:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

impl NewHome {
    pub fn validate(&self) -> Result<(), Problem> {
        home_id("id", &self.id)?;
        name("name", &self.name)?;
        if let Some(a) = &self.address {
            address(a)?;
        }
        if let Some(tz) = &self.timezone {
            timezone(tz)?;
        }
        if let Some(m) = &self.metadata {
            metadata(m)?;
        }
        Ok(())
    }
}

impl HomePatch {
    pub fn validate(&self) -> Result<(), Problem> {
        if let Some(n) = &self.name {
            name("name", n)?;
        }
        if let Some(Some(a)) = &self.address {
            address(a)?;
        }
        if let Some(tz) = &self.timezone {
            timezone(tz)?;
        }
        if let Some(m) = &self.metadata {
            metadata(m)?;
        }
        Ok(())
    }
}

impl NewDevice {
    pub fn validate(&self) -> Result<(), Problem> {
        device_id("id", &self.id)?;
        home_id("home_id", &self.home_id)?;
        kind(&self.kind)?;
        name("name", &self.name)?;
        capabilities(&self.capabilities)?;
        if let Some(m) = &self.metadata {
            metadata(m)?;
        }
        Ok(())
    }
}

impl DevicePatch {
    pub fn validate(&self) -> Result<(), Problem> {
        if let Some(h) = &self.home_id {
            home_id("home_id", h)?;
        }
        if let Some(k) = &self.kind {
            kind(k)?;
        }
        if let Some(n) = &self.name {
            name("name", n)?;
        }
        if let Some(c) = &self.capabilities {
            capabilities(c)?;
        }
        if let Some(m) = &self.metadata {
            metadata(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_fields() {
        assert!(name("name", "Hall").is_ok());
        assert!(name("name", "").is_err());
        assert!(name("name", &"x".repeat(201)).is_err());
        assert!(timezone("Europe/Berlin").is_ok());
        assert!(timezone("../etc").is_err());
        assert!(metadata(&serde_json::json!({"a": 1})).is_ok());
        assert!(metadata(&serde_json::json!([1])).is_err());
        assert!(capabilities(&["temperature".into(), "x_1".into()]).is_ok());
        assert!(capabilities(&["Bad".into()]).is_err());
        assert!(capabilities(&["a".into(), "a".into()]).is_err());
    }

    #[test]
    fn patch_tells_null_from_absent() {
        let p: HomePatch = serde_json::from_str(r#"{"address": null}"#).unwrap();
        assert_eq!(p.address, Some(None));
        let p: HomePatch = serde_json::from_str("{}").unwrap();
        assert_eq!(p.address, None);
    }
}
