//! Which devices hold a connection to this broker replica: commands go out
//! only where their device is connected, so only that replica reports them
//! delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use warmhouse_contracts::kafka::ConnectionRef;

/// One MQTT connection of a device to this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConnection {
    /// Unique within this process, increasing.
    pub number: u64,
    /// When the replica accepted it, in ms since the epoch.
    pub connected_at_ms: i64,
    /// Its tenant (the device id its certificate or username proved), if
    /// the listener authenticates devices.
    pub tenant: Option<String>,
}

/// The devices connected to this replica. Cheap to clone.
#[derive(Debug, Default, Clone)]
pub struct Connections {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Device of each live connection, by connection number.
    device_of: HashMap<u64, String>,
    /// Live connections of each device (a device may briefly hold two
    /// while a new session replaces the old one).
    connections_of: HashMap<String, usize>,
}

impl Connections {
    fn state(&self) -> MutexGuard<'_, State> {
        // One insert or remove at a time: a poisoned map is still whole.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connection `number` speaks for `device` (its tenant, or, on an open
    /// listener, the device its last will or its first publish names).
    /// Nothing changes when the connection is already known.
    pub fn speaks_for(&self, number: u64, device: &str) {
        let mut state = self.state();
        if state.device_of.contains_key(&number) {
            return;
        }
        state.device_of.insert(number, device.to_string());
        *state.connections_of.entry(device.to_string()).or_default() += 1;
    }

    /// Whether connection `number` is known to speak for a device.
    pub fn knows(&self, number: u64) -> bool {
        self.state().device_of.contains_key(&number)
    }

    /// Connection `number` ended.
    pub fn ended(&self, number: u64) {
        let mut state = self.state();
        let Some(device) = state.device_of.remove(&number) else {
            return;
        };
        if let Some(count) = state.connections_of.get_mut(&device) {
            *count -= 1;
            if *count == 0 {
                state.connections_of.remove(&device);
            }
        }
    }

    /// Whether `device` holds a connection to this replica.
    pub fn is_connected(&self, device: &str) -> bool {
        self.state().connections_of.contains_key(device)
    }

    /// Devices with a live connection.
    pub fn device_count(&self) -> usize {
        self.state().connections_of.len()
    }
}

impl DeviceConnection {
    /// How the connection is named in the device events it carries.
    pub fn reference(&self, broker: &str) -> ConnectionRef {
        ConnectionRef {
            broker: broker.to_string(),
            connected_at_ms: self.connected_at_ms,
            number: self.number,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_connected_while_any_of_its_connections_lives() {
        let connections = Connections::default();
        assert!(!connections.is_connected("d"));
        connections.speaks_for(1, "d");
        connections.speaks_for(1, "d");
        connections.speaks_for(2, "d");
        assert!(connections.knows(1));
        assert_eq!(connections.device_count(), 1);
        connections.ended(1);
        assert!(connections.is_connected("d"), "connection 2 still lives");
        connections.ended(2);
        connections.ended(2);
        assert!(!connections.is_connected("d"));
        assert!(!connections.knows(1));
        assert_eq!(connections.device_count(), 0);
    }
}
