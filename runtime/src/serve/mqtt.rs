//! MQTT publishing: each camera's debounced state changes and their snapshots (retained),
//! periodic status, availability with a last will, and Home Assistant discovery of each
//! camera; reconnects with backoff on its own task, so a lost broker never blocks
//! classification.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::actions::Jpeg;
use super::camera::{StateEvent, DEFAULT_CAMERA};
use super::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Base topic: `<topic>/<camera>/state`, `<topic>/<camera>/snapshot`,
    /// `<topic>/status`, `<topic>/availability` (and `<topic>/state` for the camera named
    /// `default`, as the one-camera daemon published it).
    pub topic: String,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    /// TLS to the broker (`serve::tls::client_config`); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Home Assistant discovery prefix (`homeassistant`); `None` turns discovery off.
    pub discovery_prefix: Option<String>,
    pub status_interval: Duration,
}

/// The status document published every `status_interval`.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A name usable in topics and ids: letters, digits, `_` and `-`.
pub fn node_id(s: &str) -> String {
    let id = crate::fsutil::safe_name(s);
    if id.is_empty() {
        "glimpse".into()
    } else {
        id
    }
}

/// The largest message published: a snapshot of a big frame.
const MAX_PACKET: usize = 16 << 20;

/// What the MQTT task publishes besides the status: the cameras' state changes and
/// snapshots.
pub struct Feeds {
    /// The cameras' names, for discovery.
    pub cameras: Vec<String>,
    /// Every camera's state changes.
    pub events: broadcast::Receiver<StateEvent>,
    /// Each camera's newest snapshot (the cameras that make them).
    pub images: Vec<(String, watch::Receiver<Option<Jpeg>>)>,
}

/// The topic of a camera's snapshots.
pub fn image_topic(cfg: &MqttConfig, camera: &str) -> String {
    format!("{}/{camera}/snapshot", cfg.topic)
}

/// The topics of a camera's state: its own, and for the camera named `default` also
/// `<topic>/state`, where the one-camera daemon published it.
pub fn state_topics(cfg: &MqttConfig, camera: &str) -> Vec<String> {
    let own = state_topic(cfg, camera);
    match camera {
        DEFAULT_CAMERA => vec![own, format!("{}/state", cfg.topic)],
        _ => vec![own],
    }
}

/// The topic of a camera's state.
fn state_topic(cfg: &MqttConfig, camera: &str) -> String {
    format!("{}/{camera}/state", cfg.topic)
}

/// The Home Assistant discovery messages (topic, retained payload): for each camera a
/// sensor for its state and one for its confidence, and with `image` an image entity for
/// the snapshot of each state, all tied to one device (the board).
pub fn discovery_messages(
    cfg: &MqttConfig,
    prefix: &str,
    model: &str,
    cameras: &[String],
    image: bool,
) -> Vec<(String, String)> {
    cameras
        .iter()
        .flat_map(|camera| camera_discovery(cfg, prefix, model, camera, image))
        .collect()
}

/// The discovery messages of one camera. The `default` camera keeps the entity ids the
/// one-camera daemon used (`glimpse_<node>_state`), so Home Assistant keeps its history.
fn camera_discovery(
    cfg: &MqttConfig,
    prefix: &str,
    model: &str,
    camera: &str,
    image: bool,
) -> Vec<(String, String)> {
    let node = node_id(&cfg.client_id);
    let (key_prefix, name_prefix) = match camera {
        DEFAULT_CAMERA => (String::new(), String::new()),
        _ => (format!("{camera}_"), format!("{camera} ")),
    };
    let device = json!({
        "identifiers": [format!("glimpse_{node}")],
        "name": format!("glimpse {node}"),
        "manufacturer": "glimpse",
        "model": model,
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let common = |name: &str, key: &str| {
        let mut name = format!("{name_prefix}{name}");
        // Home Assistant shows the name as it is: "gate state", not "gate State".
        if !name_prefix.is_empty() {
            name = name.to_lowercase();
        }
        let key = format!("{key_prefix}{key}");
        let entity = json!({
            "name": name,
            "unique_id": format!("glimpse_{node}_{key}"),
            "object_id": format!("glimpse_{node}_{key}"),
            "availability_topic": format!("{}/availability", cfg.topic),
            "device": device.clone(),
        });
        (key, entity)
    };
    let state_topic = json!(state_topic(cfg, camera));
    let (state_key, mut state) = common("State", "state");
    state["state_topic"] = state_topic.clone();
    state["value_template"] = json!("{{ value_json.state }}");
    state["json_attributes_topic"] = state_topic.clone();
    state["icon"] = json!("mdi:eye");
    let (confidence_key, mut confidence) = common("Confidence", "confidence");
    confidence["state_topic"] = state_topic;
    confidence["value_template"] = json!("{{ (value_json.confidence * 100) | round(1) }}");
    confidence["unit_of_measurement"] = json!("%");
    confidence["state_class"] = json!("measurement");
    let mut out = vec![
        (
            format!("{prefix}/sensor/{node}/{state_key}/config"),
            state.to_string(),
        ),
        (
            format!("{prefix}/sensor/{node}/{confidence_key}/config"),
            confidence.to_string(),
        ),
    ];
    if image {
        let (snapshot_key, mut snapshot) = common("Snapshot", "snapshot");
        snapshot["image_topic"] = json!(image_topic(cfg, camera));
        snapshot["content_type"] = json!("image/jpeg");
        out.push((
            format!("{prefix}/image/{node}/{snapshot_key}/config"),
            snapshot.to_string(),
        ));
    }
    out
}

/// Runs the MQTT client until `shutdown` turns true; then publishes `offline`.
pub async fn run(
    cfg: MqttConfig,
    metrics: Arc<Metrics>,
    feeds: Feeds,
    status: StatusFn,
    model_name: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let Feeds {
        cameras,
        events,
        mut images,
    } = feeds;
    let mut events = Some(events);
    let availability = format!("{}/availability", cfg.topic);
    let status_topic = format!("{}/status", cfg.topic);
    // Messages wait here while the broker is away; beyond 64 they are dropped (and
    // counted) rather than blocking anything.
    let (client, mut eventloop) = AsyncClient::new(options(&cfg, &availability), 64);
    let publish = |topic: &str, qos: QoS, retain: bool, payload: Vec<u8>| {
        publish(&client, &metrics, topic, qos, retain, payload)
    };
    let with_image = !images.is_empty();
    // Each camera's last state event, published again on every connection.
    let mut last_state: BTreeMap<String, String> = BTreeMap::new();
    let mut backoff = Duration::from_millis(500);
    let mut down_since_logged = false;
    let mut status_tick = tokio::time::interval(cfg.status_interval);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    log::info!(
        "mqtt: connecting to {}:{} as {}{}",
        cfg.host,
        cfg.port,
        cfg.client_id,
        if cfg.tls.is_some() { " over TLS" } else { "" }
    );
    loop {
        tokio::select! {
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    log::info!("mqtt: connected to {}:{}", cfg.host, cfg.port);
                    metrics.mqtt_connected.set(1);
                    backoff = Duration::from_millis(500);
                    down_since_logged = false;
                    // Retained messages may be gone (a broker restarted without
                    // persistence): publish everything a subscriber needs again.
                    let described = Described { cfg: &cfg, model: &model_name, cameras: &cameras, image: with_image };
                    for (topic, payload) in retained(&described, &last_state) {
                        publish(&topic, QoS::AtLeastOnce, true, payload.into_bytes());
                    }
                    // The newest snapshots are the ones the channels hold.
                    for (camera, rx) in &images {
                        if let Some(jpeg) = rx.borrow().clone() {
                            publish(&image_topic(&cfg, camera), QoS::AtLeastOnce, true, jpeg.to_vec());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.mqtt_connected.set(0);
                    metrics.error("mqtt");
                    let e = describe(&e);
                    if !down_since_logged {
                        log::warn!("mqtt: {}:{}: {e}; reconnecting with backoff", cfg.host, cfg.port);
                        down_since_logged = true;
                    } else {
                        log::debug!("mqtt: {}:{}: {e}", cfg.host, cfg.port);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            },
            received = async { match events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            } } => match received {
                Ok(event) => {
                    let payload = serde_json::to_string(&event).unwrap_or_default();
                    for topic in state_topics(&cfg, &event.camera) {
                        publish(&topic, QoS::AtLeastOnce, true, payload.clone().into_bytes());
                    }
                    last_state.insert(event.camera, payload);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    log::warn!("mqtt: skipped {n} state changes (publishing too slowly)");
                }
                Err(broadcast::error::RecvError::Closed) => events = None,
            },
            (i, changed) = next_image(&mut images) => match changed {
                Ok(()) => {
                    let (camera, rx) = &mut images[i];
                    let jpeg = rx.borrow_and_update().clone();
                    if let Some(jpeg) = jpeg {
                        publish(&image_topic(&cfg, camera), QoS::AtLeastOnce, true, jpeg.to_vec());
                    }
                }
                Err(_) => drop(images.remove(i)),
            },
            _ = status_tick.tick() => {
                publish(&status_topic, QoS::AtMostOnce, false, status().to_string().into_bytes());
            }
            _ = shutdown.changed() => break,
        }
    }
    // Say goodbye if the broker is there; give it a moment, never more.
    publish(&availability, QoS::AtLeastOnce, true, b"offline".to_vec());
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    metrics.mqtt_connected.set(0);
}

/// The connection settings: keep-alive, the "offline" last will, credentials.
fn options(cfg: &MqttConfig, availability: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(15));
    // Answers from the broker are small; what is sent can be a snapshot.
    opts.set_max_packet_size(10 << 10, MAX_PACKET);
    opts.set_last_will(LastWill::new(
        availability,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some((user, pass)) = &cfg.credentials {
        opts.set_credentials(user.clone(), pass.clone());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    opts
}

/// A connection error as a person can act on it: the broker's refusals say which setting
/// to check; TLS and network errors as rumqttc gives them (rustls names the certificate
/// problem, e.g. `invalid peer certificate: UnknownIssuer`).
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => "the broker refused the user name or password (check --mqtt-username and the \
              MQTT password)"
            .into(),
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {code:?}")
        }
        e => e.to_string(),
    }
}

/// Queues a message; a full queue drops it (counted), never blocks.
fn publish(
    client: &AsyncClient,
    metrics: &Metrics,
    topic: &str,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
) {
    if let Err(e) = client.try_publish(topic, qos, retain, payload) {
        metrics.error("mqtt_dropped");
        log::debug!("mqtt: dropped a message for {topic}: {e}");
    } else {
        metrics.mqtt_published.inc();
    }
}

/// The first of the cameras' snapshot channels to change: its index, and whether its
/// sender is still there (pending forever with none).
async fn next_image(
    images: &mut [(String, watch::Receiver<Option<Jpeg>>)],
) -> (usize, Result<(), watch::error::RecvError>) {
    if images.is_empty() {
        return std::future::pending().await;
    }
    let changes = images.iter_mut().map(|(_, rx)| Box::pin(rx.changed()));
    let (changed, i, _) = futures_util::future::select_all(changes).await;
    (i, changed)
}

/// What discovery describes: the board's cameras, the model, whether there are snapshots.
struct Described<'a> {
    cfg: &'a MqttConfig,
    model: &'a str,
    cameras: &'a [String],
    image: bool,
}

/// The retained messages a subscriber needs, published again on every connection:
/// availability, discovery (if on) and each camera's last state (the snapshots aside).
fn retained(d: &Described, last_state: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let cfg = d.cfg;
    let mut out = vec![(format!("{}/availability", cfg.topic), "online".to_string())];
    if let Some(prefix) = &cfg.discovery_prefix {
        out.extend(discovery_messages(cfg, prefix, d.model, d.cameras, d.image));
    }
    for (camera, state) in last_state {
        out.extend(
            state_topics(cfg, camera)
                .into_iter()
                .map(|t| (t, state.clone())),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MqttConfig {
        MqttConfig {
            host: "localhost".into(),
            port: 1883,
            topic: "glimpse/shed".into(),
            client_id: "shed cam".into(),
            credentials: None,
            tls: None,
            discovery_prefix: Some("homeassistant".into()),
            status_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn discovery_ties_both_sensors_to_the_state_topic() {
        let cfg = config();
        let default = [DEFAULT_CAMERA.to_string()];
        assert_eq!(
            discovery_messages(&cfg, "homeassistant", "birds.onnx", &default, false).len(),
            2
        );
        let msgs = discovery_messages(&cfg, "homeassistant", "birds.onnx", &default, true);
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].0, "homeassistant/sensor/shed_cam/state/config");
        for (_, payload) in &msgs[..2] {
            let v: serde_json::Value = serde_json::from_str(payload).unwrap();
            assert_eq!(v["state_topic"], "glimpse/shed/default/state");
        }
        assert_eq!(msgs[2].0, "homeassistant/image/shed_cam/snapshot/config");
        let image: serde_json::Value = serde_json::from_str(&msgs[2].1).unwrap();
        assert_eq!(image["image_topic"], "glimpse/shed/default/snapshot");
        assert_eq!(image["content_type"], "image/jpeg");
        assert!(image.get("state_topic").is_none(), "{image}");
        for (_, payload) in &msgs {
            let v: serde_json::Value = serde_json::from_str(payload).unwrap();
            assert_eq!(v["availability_topic"], "glimpse/shed/availability");
            assert_eq!(v["device"]["identifiers"][0], "glimpse_shed_cam");
        }
    }

    #[test]
    fn each_camera_has_its_own_entities_on_one_device() {
        let cfg = config();
        let cameras = ["default".to_string(), "gate".to_string()];
        let msgs = discovery_messages(&cfg, "homeassistant", "m.onnx", &cameras, true);
        let topics: Vec<&str> = msgs.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/shed_cam/state/config",
                "homeassistant/sensor/shed_cam/confidence/config",
                "homeassistant/image/shed_cam/snapshot/config",
                "homeassistant/sensor/shed_cam/gate_state/config",
                "homeassistant/sensor/shed_cam/gate_confidence/config",
                "homeassistant/image/shed_cam/gate_snapshot/config",
            ]
        );
        let gate: serde_json::Value = serde_json::from_str(&msgs[3].1).unwrap();
        assert_eq!(gate["name"], "gate state");
        assert_eq!(gate["unique_id"], "glimpse_shed_cam_gate_state");
        assert_eq!(gate["state_topic"], "glimpse/shed/gate/state");
        let ids: std::collections::HashSet<String> = msgs
            .iter()
            .map(|(_, p)| {
                serde_json::from_str::<serde_json::Value>(p).unwrap()["unique_id"].to_string()
            })
            .collect();
        assert_eq!(ids.len(), msgs.len(), "unique ids are unique");
        assert_eq!(
            state_topics(&cfg, "default"),
            ["glimpse/shed/default/state", "glimpse/shed/state"]
        );
        assert_eq!(state_topics(&cfg, "gate"), ["glimpse/shed/gate/state"]);
    }
}
