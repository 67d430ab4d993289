use super::Ack;
use slab::Slab;
use tracing::{info, trace, warn};

use crate::protocol::{
    has_wildcards, matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::filter_trie::FilterTrie;
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::{CommitLog, Position};
use crate::Storage;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Instant;

type PubWithProp = (Publish, Option<PublishProperties>);

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub timestamp: Instant,
    /// WARMHOUSE PATCH (16): the publisher's client id, hashed
    /// (`client_origin`; 0 when unknown), for MQTT 5 No Local.
    pub origin: u64,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties,
            timestamp: Instant::now(),
            origin: 0,
        }
    }
}

/// WARMHOUSE PATCH (20): the filter whose log a subscription reads: the
/// subscription without `$share/{group}/` (as `extract_group` in routing
/// splits it).
pub(crate) fn log_filter(subscription: &str) -> &str {
    subscription
        .strip_prefix("$share/")
        .and_then(|s| s.split_once('/'))
        .map_or(subscription, |(_, path)| path)
}

/// WARMHOUSE PATCH (21): the properties a retained message goes out with
/// (its Message Expiry Interval reduced by the time it has waited), or
/// `None` once it has expired.
/// <https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112>
fn remaining_lifetime(pubdata: &PublishData, now: Instant) -> Option<Option<PublishProperties>> {
    let Some(properties) = pubdata.properties.as_ref() else {
        return Some(None);
    };
    let Some(interval) = properties.message_expiry_interval else {
        return Some(Some(properties.clone()));
    };
    let waited = u32::try_from(now.duration_since(pubdata.timestamp).as_secs()).unwrap_or(u32::MAX);
    let remaining = interval.checked_sub(waited).filter(|left| *left > 0)?;
    let mut properties = properties.clone();
    properties.message_expiry_interval = Some(remaining);
    Some(Some(properties))
}

/// WARMHOUSE PATCH (16): what `PublishData::origin` holds for a client id.
pub(crate) fn client_origin(client_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut hasher);
    // 0 stands for "unknown".
    hasher.finish().max(1)
}

// TODO: remove this from here
impl Storage for PublishData {
    // TODO: calculate size of publish properties as well!
    fn size(&self) -> usize {
        let publish = &self.publish;
        4 + publish.topic.len() + publish.payload.len()
    }
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    pub native: Slab<Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    retained_publishes: HashMap<Topic, PublishData>,
    /// WARMHOUSE PATCH (8): the filters by topic level (was a cache of the
    /// filters of every topic ever published, filled by a linear scan).
    filter_trie: FilterTrie,
    /// WARMHOUSE PATCH (20): the generation the next filter log gets (see
    /// `Data::generation`).
    next_generation: u64,
    /// WARMHOUSE PATCH (28): filters held when `native` last tried to
    /// shrink (see `shrink_native`).
    native_shrunk_at: usize,
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut native = Slab::new();
        let mut filter_indexes = HashMap::new();
        let retained_publishes = HashMap::new();
        let mut filter_trie = FilterTrie::default();
        let mut next_generation = 0;

        if let Some(warmup_filters) = config.initialized_filters.clone() {
            for filter in warmup_filters {
                let mut data = Data::new(&filter, &config);
                // WARMHOUSE PATCH (20): configured filters stay without
                // subscribers.
                data.pinned = true;
                data.generation = next_generation;
                next_generation += 1;

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = native.insert(data);
                filter_trie.insert(&filter, idx);
                filter_indexes.insert(filter, idx);
            }
        }

        Ok(DataLog {
            config,
            native,
            filter_trie,
            filter_indexes,
            retained_publishes,
            next_generation,
            native_shrunk_at: usize::MAX,
        })
    }

    /// WARMHOUSE PATCH (20): one more subscription (of a live connection or
    /// a kept session) reads the log at `idx`.
    pub fn subscribe(&mut self, idx: FilterIdx) {
        if let Some(data) = self.native.get_mut(idx) {
            data.users += 1;
        }
    }

    /// WARMHOUSE PATCH (20): a subscription to `filter` (the log's filter,
    /// without `$share/{group}/`) ended. When it was the last, the filter's
    /// log, waiters and meter are freed and the filter leaves the index and
    /// the trie (retained messages are kept apart and stay). Returns whether
    /// it was freed. The caller makes sure no `DataRequest` for it is left
    /// (trackers, waiters, pending notifications).
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        let Some(&idx) = self.filter_indexes.get(filter) else {
            return false;
        };
        let Some(data) = self.native.get_mut(idx) else {
            return false;
        };
        data.users = data.users.saturating_sub(1);
        if data.users > 0 || data.pinned {
            return false;
        }
        self.native.remove(idx);
        self.shrink_native(idx);
        self.filter_indexes.remove(filter);
        // Maps keep their largest capacity: shrink once most of it is free.
        if self.filter_indexes.capacity() > 64
            && self.filter_indexes.len() < self.filter_indexes.capacity() / 4
        {
            self.filter_indexes.shrink_to_fit();
        }
        self.filter_trie.remove(filter);
        trace!(filter, "freed a filter nothing subscribes to");
        true
    }

    /// WARMHOUSE PATCH (28): gives back the slab room of freed filters once
    /// most of it is free (a client that subscribed to 20,000 filters and
    /// left kept about 5 MB of it). A slab cannot shrink past its highest
    /// filter still held and trying costs a pass over it, so it is tried
    /// when the filters held have halved since the last try, or when the
    /// highest slot was just freed.
    fn shrink_native(&mut self, freed: FilterIdx) {
        let (len, capacity) = (self.native.len(), self.native.capacity());
        if capacity <= 64 || len * 4 >= capacity {
            return;
        }
        if len * 2 <= self.native_shrunk_at || freed + 1 >= capacity {
            self.native.shrink_to_fit();
            self.native_shrunk_at = len;
        }
    }

    /// WARMHOUSE PATCH (20): the generation of the log at `idx`: a log made
    /// later in the same slab slot has another, so a filter index kept
    /// somewhere (a connection's in-flight publishes) is not taken for the
    /// new log's.
    pub fn generation(&self, idx: FilterIdx) -> Option<u64> {
        self.native.get(idx).map(|data| data.generation)
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(*self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    /// WARMHOUSE PATCH (20): the waiter of `subscription` (as the client
    /// subscribed it, `$share/{group}/` included) on the log of `filter`
    /// (without it). Upstream looked the log up by the subscription, so a
    /// shared subscription's waiter stayed after UNSUBSCRIBE and was woken
    /// by the next message, and it took the connection's first waiter on
    /// the log, whichever subscription it was for.
    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &str,
        subscription: &str,
    ) -> Option<DataRequest> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|(conn_id, request)| *conn_id == id && request.filter == subscription)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    // TODO: Currently returning a Option<Vec> instead of Option<&Vec> due to Rust borrow checker
    // limitation
    pub fn matches(&mut self, topic: &str) -> Option<Vec<usize>> {
        // WARMHOUSE PATCH (8): a walk down the filter trie.
        Some(self.filter_trie.matches(topic))
    }

    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        let filter_indexes = &mut self.filter_indexes;

        let (filter_idx, data) = match filter_indexes.get(filter) {
            Some(idx) => (*idx, self.native.get(*idx).unwrap()),
            None => {
                let mut data = Data::new(filter, &self.config);
                // WARMHOUSE PATCH (20)
                data.generation = self.next_generation;
                self.next_generation += 1;

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = self.native.insert(data);
                // WARMHOUSE PATCH (28): growing again: shrink again later.
                if self.native.len() > self.native_shrunk_at {
                    self.native_shrunk_at = usize::MAX;
                }
                self.filter_indexes.insert(filter.to_owned(), idx);
                // WARMHOUSE PATCH (8): upstream matched the new filter
                // against every topic published so far.
                self.filter_trie.insert(filter, idx);

                (idx, self.native.get(idx).unwrap())
            }
        };

        (filter_idx, data.log.next_offset())
    }

    /// WARMHOUSE PATCH (16): `skip_origin` leaves out what that publisher
    /// published (a No Local subscription's own messages).
    pub fn native_readv(
        &self,
        filter_idx: FilterIdx,
        offset: Offset,
        len: u64,
        skip_origin: Option<u64>,
    ) -> io::Result<(Position, Vec<(PubWithProp, Offset)>)> {
        // unwrap to get index of `self.native` is fine here, because when a new subscribe packet
        // arrives in `Router::handle_device_payload`, it first calls the function
        // `next_native_offset` which creates a new commitlog if one doesn't exist. So any new
        // reads will definitely happen on a valid filter.
        // WARMHOUSE PATCH (20): filters are freed; a request for one that
        // is gone (which the router does not leave behind) reads nothing.
        let data = self.native.get(filter_idx).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "filter log freed")
        })?;
        let mut o = Vec::new();
        // TODO: `readv` is infallible but its current return type does not
        // reflect that. Consequently, this method is also infallible.
        // Encoding this information is important so that calling function
        // has more information on how this method behaves.
        let next = data.log.readv(offset, len, &mut o)?;

        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        let o = o
            .into_iter()
            .filter(|(pubdata, _)| skip_origin != Some(pubdata.origin))
            .map(|(pubdata, offset)| ((pubdata.publish, pubdata.properties), offset))
            .collect();

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        data.log.last().map(|p| (p.publish, p.properties))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // calling unwrap on index here is fine, because only place this function is called is in
        // `Router::consume` method, when the status after reading from commit log of the same
        // filter as `request` is "done", that is, the subscriber has caught up. In other words,
        // there has been atleast 1 call to `native_readv` for the same filter, which means if
        // `native_readv` hasn't paniced, so this won't panic either.
        // WARMHOUSE PATCH (20): a request for a freed filter is dropped.
        match self.native.get_mut(request.filter_idx) {
            Some(data) => data.waiters.register(id, request),
            None => warn!(filter = request.filter, "request for a freed filter dropped"),
        }
    }

    /// Cleanup a connection from all the waiters
    ///
    /// WARMHOUSE PATCH (22): a connection waits only on the logs of its own
    /// `subscriptions` (as the connection records them, shared ones with
    /// their `$share/{group}/`), so only those are searched; upstream
    /// searched every filter's waiters at every disconnect, which with a
    /// command filter per device made a reconnect storm quadratic. Should a
    /// subscription name no log (never expected), every log is searched.
    pub fn clean<'a>(
        &mut self,
        id: ConnectionId,
        subscriptions: impl IntoIterator<Item = &'a String>,
    ) -> Vec<DataRequest> {
        let logs: Option<Vec<FilterIdx>> = subscriptions
            .into_iter()
            .map(|subscription| self.filter_indexes.get(log_filter(subscription)).copied())
            .collect();
        let mut inflight = Vec::new();
        match logs {
            Some(mut logs) => {
                // Shared and plain subscriptions of one filter share its log.
                logs.sort_unstable();
                logs.dedup();
                for idx in logs {
                    if let Some(data) = self.native.get_mut(idx) {
                        inflight.append(&mut data.waiters.remove(id));
                    }
                }
            }
            None => {
                for (_, data) in self.native.iter_mut() {
                    inflight.append(&mut data.waiters.remove(id));
                }
            }
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
        // WARMHOUSE PATCH (16)
        origin: u64,
    ) {
        let pub_with_props = (publish, publish_properties);
        let mut data = PublishData::from(pub_with_props);
        data.origin = origin;
        self.retained_publishes.insert(topic, data);
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_publishes.remove(&topic);
    }

    /// WARMHOUSE PATCH (16): `skip_origin` as in `native_readv`.
    /// WARMHOUSE PATCH (21): a filter without wildcards is looked up by
    /// its topic instead of matched against every retained message (with a
    /// retained status per device, every device's subscription scanned the
    /// whole fleet's). Expiry is checked on the messages read, not on all of
    /// them, and the stored Message Expiry Interval is left as it was
    /// published: upstream subtracted the whole time since publishing from
    /// it at every read, so a message read twice expired early.
    pub fn read_retained_messages(
        &mut self,
        filter: &str,
        skip_origin: Option<u64>,
    ) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut read = Vec::new();
        let mut take = |topic: &Topic, pubdata: &PublishData| match remaining_lifetime(pubdata, now)
        {
            Some(properties) => {
                if skip_origin != Some(pubdata.origin) {
                    read.push((pubdata.publish.clone(), properties));
                }
            }
            None => expired.push(topic.clone()),
        };
        if has_wildcards(filter) {
            for (topic, pubdata) in self.retained_publishes.iter() {
                if matches(topic, filter) {
                    take(topic, pubdata);
                }
            }
        } else if let Some((topic, pubdata)) = self.retained_publishes.get_key_value(filter) {
            take(topic, pubdata);
        }
        for topic in expired {
            self.retained_publishes.remove(&topic);
        }
        read
    }
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
    /// WARMHOUSE PATCH (20): subscriptions reading this log, of live
    /// connections and kept sessions; at 0 the log is freed.
    users: usize,
    /// WARMHOUSE PATCH (20): a configured (`initialized_filters`) filter,
    /// never freed.
    pinned: bool,
    /// WARMHOUSE PATCH (20): unique among the logs this router ever made.
    generation: u64,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        // WARMHOUSE PATCH (26): grows with use.
        let waiters = Waiters::with_capacity(0);
        let metrics = SubscriptionMeter::default();
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
            users: 0,
            pinned: false,
            generation: 0,
        }
    }

    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let offset = self.log.append(item);
        if let Some(mut parked) = self.waiters.take() {
            notifications.append(&mut parked);
        }

        self.meter.count += 1;
        self.meter.total_size += size;

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        // WARMHOUSE PATCH (26): both grow with use (upstream reserved 100
        // acks each for every connection).
        AckLog {
            committed: VecDeque::new(),
            recorded: VecDeque::new(),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    use super::DataLog;
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        // WARMHOUSE PATCH (8): matched by the filter trie, not a cache.
        assert_eq!(data.matches("topic/a").unwrap().len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        // WARMHOUSE PATCH (8): matched by the filter trie, not a cache.
        assert_eq!(data.matches("topic/a").unwrap().len(), 1);
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}
