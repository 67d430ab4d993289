use slab::Slab;

use crate::protocol::LastWillProperties;
use crate::Filter;
use crate::{protocol::LastWill, Topic};
use std::collections::{HashMap, HashSet};

use super::ConnectionEvents;

/// Used to register a new connection with the router
/// Connection messages encompasses a handle for router to
/// communicate with this connection
#[derive(Debug)]
pub struct Connection {
    pub client_id: String,
    /// Id of client's organisation/tenant and the prefix associated with tenant's MQTT topic
    pub tenant_prefix: Option<String>,
    /// Dynamically create subscription filters incase they didn't exist during a publish
    pub dynamic_filters: bool,
    /// Clean session
    pub clean: bool,
    /// Subscriptions
    pub subscriptions: HashSet<Filter>,
    /// Last will of this connection
    pub last_will: Option<LastWill>,
    /// Properties of Last will
    pub last_will_properties: Option<LastWillProperties>,
    /// Connection events
    pub events: ConnectionEvents,
    /// Topic aliases set by clients
    pub(crate) topic_aliases: HashMap<u16, Topic>,
    /// Topic aliases used by broker
    pub(crate) broker_topic_aliases: Option<BrokerAliases>,
    /// subscription IDs for a connection
    pub(crate) subscription_ids: HashMap<Filter, usize>,
    /// WARMHOUSE PATCH (7): the link acknowledges this connection's
    /// publishes (a publish hook decides when), so the router must not.
    pub(crate) link_acks: bool,
    /// WARMHOUSE PATCH (15): the largest packet the client takes (its MQTT 5
    /// Maximum Packet Size); larger messages are not sent to it.
    pub(crate) client_max_packet_size: Option<u32>,
    /// WARMHOUSE PATCH (17): MQTT 5 Session Expiry Interval in seconds
    /// (0 when absent); None on MQTT 3.1.1, whose Clean Session decides.
    pub(crate) session_expiry: Option<u32>,
    /// WARMHOUSE PATCH (25): unique among this process's connections (a
    /// connection id is reused as soon as its connection is gone).
    pub(crate) incarnation: u64,
}

impl Connection {
    /// Create connection state to hold identifying information of connecting device
    pub fn new(
        tenant_id: Option<String>,
        client_id: String,
        clean: bool,
        dynamic_filters: bool,
    ) -> Connection {
        // Change client id to -> tenant_id.client_id and derive topic path prefix
        // to validate topics
        let (client_id, tenant_prefix) = match tenant_id {
            Some(tenant_id) => {
                let tenant_prefix = Some("/tenants/".to_owned() + &tenant_id + "/");
                let client_id = tenant_id + "." + &client_id;
                (client_id, tenant_prefix)
            }
            None => (client_id, None),
        };

        Connection {
            client_id,
            tenant_prefix,
            dynamic_filters,
            clean,
            subscriptions: HashSet::default(),
            last_will: None,
            last_will_properties: None,
            events: ConnectionEvents::default(),
            topic_aliases: HashMap::new(),
            broker_topic_aliases: None,
            subscription_ids: HashMap::new(),
            link_acks: false,
            client_max_packet_size: None,
            session_expiry: None,
            incarnation: NEXT_INCARNATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// WARMHOUSE PATCH (17): whether the session outlives the network
    /// connection: on MQTT 5 when the Session Expiry Interval is above 0,
    /// whatever Clean Start said (3.1.2.11.2); on 3.1.1 without Clean
    /// Session.
    pub(crate) fn keeps_session(&self) -> bool {
        match self.session_expiry {
            Some(secs) => secs > 0,
            None => !self.clean,
        }
    }

    /// WARMHOUSE PATCH (17): when a session saved now expires (None: never;
    /// 0xFFFFFFFF means never in MQTT 5).
    pub(crate) fn session_expires_at(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        match self.session_expiry {
            Some(u32::MAX) | None => None,
            Some(secs) => Some(now + std::time::Duration::from_secs(u64::from(secs))),
        }
    }

    pub fn topic_alias_max(&mut self, max: u16) -> &mut Connection {
        // if topic_alias_max is 0, that means client doesn't want to use / support topic alias
        if max > 0 {
            // WARMHOUSE PATCH (14): aliases now stand for topics, and each
            // keeps its topic name for the connection's life: at most
            // `BROKER_ASSIGNED_ALIASES` of them, whatever the client allows.
            self.broker_topic_aliases =
                Some(BrokerAliases::new(max.min(BROKER_ASSIGNED_ALIASES)));
        }
        self
    }

    pub fn last_will(
        &mut self,
        will: Option<LastWill>,
        props: Option<LastWillProperties>,
    ) -> &mut Connection {
        self.last_will = will;
        self.last_will_properties = props;
        self
    }
}

/// WARMHOUSE PATCH (25): the next `Connection::incarnation`.
static NEXT_INCARNATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// WARMHOUSE PATCH (14): the most topic aliases the broker assigns on one
/// connection (MQTT 5 lets it use fewer than the client's maximum).
const BROKER_ASSIGNED_ALIASES: u16 = 64;

#[derive(Debug)]
pub(crate) struct BrokerAliases {
    pub(crate) broker_topic_aliases: HashMap<Filter, u16>,
    pub(crate) used_aliases: Slab<()>,
    pub(crate) topic_alias_max: u16,
}

impl BrokerAliases {
    fn new(topic_alias_max: u16) -> BrokerAliases {
        let mut used_aliases = Slab::new();
        // occupy 0th index as 0 is invalid topic alias
        assert_eq!(0, used_aliases.insert(()));

        let broker_topic_aliases = HashMap::new();

        BrokerAliases {
            broker_topic_aliases,
            used_aliases,
            topic_alias_max,
        }
    }

    // unset / remove the alias for topic
    pub fn remove_alias(&mut self, topic: &str) {
        if let Some(alias) = self.broker_topic_aliases.remove(topic) {
            self.used_aliases.remove(alias as usize);
        }
    }

    // Get alias used for the topic, if it exists
    pub fn get_alias(&self, topic: &str) -> Option<u16> {
        self.broker_topic_aliases.get(topic).copied()
    }

    // Set new alias for a topic and return the alias
    // returns None if can't set new alias
    pub fn set_new_alias(&mut self, topic: &str) -> Option<u16> {
        let alias_to_use = self.used_aliases.insert(());

        // NOTE: maybe we can use self.used_aliases.len()
        // to check for availability of alias
        if alias_to_use > self.topic_alias_max as usize {
            self.used_aliases.remove(alias_to_use);
            return None;
        }

        let alias_to_use = alias_to_use as u16;
        self.broker_topic_aliases
            .insert(topic.to_owned(), alias_to_use);
        Some(alias_to_use)
    }
}
