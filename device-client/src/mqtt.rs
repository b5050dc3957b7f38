//! MQTT 5 over mutual TLS with AWS IoT: one connection driven step by step (rumqttc's event
//! loop, polled here, never left to reconnect on its own), with the acknowledgements MQTT 5
//! gives reason codes to: CONNACK, SUBACK, PUBACK. On top, the request/answer pattern of AWS
//! IoT's MQTT APIs: subscribe to `<topic>/accepted` and `<topic>/rejected`, then publish to
//! `<topic>`; the answer comes on one of the two, to this connection only.
//!
//! MQTT 5 rather than 3.1.1 because its acknowledgements say why: AWS IoT answers a publish
//! its policy does not allow with PUBACK `Not authorized` (0x87), where an MQTT 3.1.1 client
//! would only see the connection close.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use rustls::ClientConfig;
use tokio::time::Instant;

use crate::tls::{error_chain, one_line};

/// AWS IoT's MQTT port with TLS client certificates.
pub const DEFAULT_PORT: u16 = 8883;
/// The ALPN protocol that selects MQTT with a client certificate on AWS IoT's port 443.
pub const ALPN_MQTT_CA: &[u8] = b"x-amzn-mqtt-ca";
/// The largest packet accepted from the broker: AWS IoT's message size limit (128 KiB) plus
/// room for the topic and properties.
const MAX_INCOMING_PACKET: u32 = 132 * 1024;

/// Where to connect: `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Offer ALPN `x-amzn-mqtt-ca` (AWS IoT requires it on port 443).
    pub alpn: bool,
}

impl Endpoint {
    /// `host`, `host:port`, `[v6]:port` or `mqtts://host[:port]`; port 8883 by default. ALPN
    /// `x-amzn-mqtt-ca` is offered on port 443, or on any port with `force_alpn` (a proxy or
    /// test broker that stands in for port 443 elsewhere).
    pub fn parse(endpoint: &str, force_alpn: bool) -> Result<Self, String> {
        let trimmed = endpoint.trim().trim_end_matches('/');
        let authority = match trimmed.split_once("://") {
            None => trimmed,
            Some(("mqtts", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "MQTT endpoint {endpoint:?}: {scheme} is not mqtts (TLS is required)"
                ))
            }
        };
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "MQTT endpoint {endpoint:?}: expected a host name, optionally with :port"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // A ':' inside an IPv6 literal without a port is not a port separator.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        format!("MQTT endpoint {endpoint:?}: {port:?} is not a port number")
                    })?;
                (host, port)
            }
            _ => (authority, DEFAULT_PORT),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("MQTT endpoint {endpoint:?}: no host name"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            alpn: force_alpn || port == 443,
        })
    }

    /// The ALPN protocols to offer.
    pub fn alpn_protocols(&self) -> &'static [&'static [u8]] {
        if self.alpn {
            &[ALPN_MQTT_CA]
        } else {
            &[]
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How long each step may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP, TLS and CONNACK.
    pub connect: Duration,
    /// An acknowledgement (SUBACK, PUBACK) or an API's answer. AWS IoT gives the Lambda
    /// functions behind fleet provisioning 5 s each, plus a cold start.
    pub answer: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            answer: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// DNS, TCP, TLS or the MQTT handshake failed, or took too long.
    #[error("could not connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// The broker refused something: the connection (CONNACK), a subscription (SUBACK) or a
    /// message (PUBACK), with MQTT 5's reason.
    #[error("{endpoint} refused {what}: {reason}")]
    Refused {
        endpoint: String,
        what: String,
        reason: String,
        /// Whether asking again later can succeed (the broker is busy or over a quota).
        transient: bool,
    },
    #[error("no {what} from {endpoint} within {} s", .waited.as_secs())]
    Timeout {
        endpoint: String,
        what: String,
        waited: Duration,
    },
    /// The connection ended while waiting.
    #[error("the connection to {endpoint} was lost: {message}")]
    Lost { endpoint: String, message: String },
}

impl MqttError {
    /// Whether trying again later (on a new connection) can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused { transient, .. } => *transient,
            Self::Connect { .. } | Self::Timeout { .. } | Self::Lost { .. } => true,
        }
    }
}

/// CONNACK reasons that end with nobody having changed anything: a busy or moving server,
/// a quota, a rate limit.
fn connect_refusal_is_transient(code: &ConnectReturnCode) -> bool {
    matches!(
        code,
        ConnectReturnCode::ServiceUnavailable
            | ConnectReturnCode::ServerUnavailable
            | ConnectReturnCode::ServerBusy
            | ConnectReturnCode::QuotaExceeded
            | ConnectReturnCode::ConnectionRateExceeded
            | ConnectReturnCode::UseAnotherServer
            | ConnectReturnCode::ServerMoved
            | ConnectReturnCode::UnspecifiedError
            | ConnectReturnCode::ImplementationSpecificError
    )
}

/// The answer to a request on AWS IoT's MQTT APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted(Vec<u8>),
    Rejected(Vec<u8>),
}

/// A deadline, and the time it allowed (for messages).
#[derive(Debug, Clone, Copy)]
struct Wait {
    until: Instant,
    budget: Duration,
}

impl Wait {
    fn for_(budget: Duration) -> Self {
        Self {
            until: Instant::now() + budget,
            budget,
        }
    }
}

/// One MQTT 5 connection.
pub struct Session {
    client: AsyncClient,
    events: EventLoop,
    endpoint: String,
    timeouts: Timeouts,
}

impl Session {
    /// Connects as `client_id` with a clean session and waits for CONNACK.
    pub async fn connect(
        endpoint: &Endpoint,
        client_id: &str,
        tls: ClientConfig,
        timeouts: Timeouts,
    ) -> Result<Self, MqttError> {
        let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )))
            .set_clean_start(true)
            .set_keep_alive(Duration::from_secs(60))
            .set_connection_timeout(timeouts.connect.as_secs().max(1))
            .set_max_packet_size(Some(MAX_INCOMING_PACKET));
        let (client, events) = AsyncClient::new(options, 10);
        let mut session = Self {
            client,
            events,
            endpoint: endpoint.to_string(),
            timeouts,
        };
        let deadline = Wait::for_(timeouts.connect);
        loop {
            match session.next_event(deadline, "CONNACK").await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(session),
                Ok(_) => continue,
                Err(MqttError::Lost { endpoint, message }) => {
                    return Err(MqttError::Connect { endpoint, message })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next event before `deadline`. A failed connection is never polled again (rumqttc
    /// would reconnect): the caller drops the session.
    async fn next_event(&mut self, deadline: Wait, waiting_for: &str) -> Result<Event, MqttError> {
        match tokio::time::timeout_at(deadline.until, self.events.poll()).await {
            Err(_) => Err(MqttError::Timeout {
                endpoint: self.endpoint.clone(),
                what: waiting_for.to_owned(),
                waited: deadline.budget,
            }),
            Ok(Ok(event)) => Ok(event),
            Ok(Err(ConnectionError::ConnectionRefused(code))) => Err(MqttError::Refused {
                endpoint: self.endpoint.clone(),
                what: "the connection".into(),
                reason: format!("CONNACK {code:?}"),
                transient: connect_refusal_is_transient(&code),
            }),
            Ok(Err(ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                reason_code,
                reason_string,
            }))) => Err(MqttError::Lost {
                endpoint: self.endpoint.clone(),
                message: format!(
                    "the broker disconnected ({reason_code:?}{})",
                    reason_string
                        .map(|r| format!(": {}", one_line(&r)))
                        .unwrap_or_default()
                ),
            }),
            Ok(Err(e)) => Err(MqttError::Lost {
                endpoint: self.endpoint.clone(),
                message: error_chain(&e),
            }),
        }
    }

    fn lost(&self, e: rumqttc::v5::ClientError) -> MqttError {
        MqttError::Lost {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        }
    }

    /// Subscribes to every filter at QoS 1, in one SUBSCRIBE, and waits for the SUBACK: each
    /// must be granted.
    pub async fn subscribe(&mut self, filters: &[String]) -> Result<(), MqttError> {
        let requested = filters
            .iter()
            .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(requested)
            .await
            .map_err(|e| self.lost(e))?;
        let deadline = Wait::for_(self.timeouts.answer);
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) =
                self.next_event(deadline, "SUBACK").await?
            {
                for (filter, code) in filters.iter().zip(&ack.return_codes) {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        return Err(MqttError::Refused {
                            endpoint: self.endpoint.clone(),
                            what: format!("the subscription to {filter}"),
                            reason: format!("SUBACK {code:?}"),
                            transient: matches!(code, SubscribeReasonCode::QuotaExceeded),
                        });
                    }
                }
                if ack.return_codes.len() != filters.len() {
                    return Err(MqttError::Lost {
                        endpoint: self.endpoint.clone(),
                        message: format!(
                            "SUBACK with {} reason codes for {} filters",
                            ack.return_codes.len(),
                            filters.len()
                        ),
                    });
                }
                return Ok(());
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK, which must say the message was accepted.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), MqttError> {
        self.send(topic, payload).await?;
        let deadline = Wait::for_(self.timeouts.answer);
        let mut pkid = None;
        loop {
            match self.next_event(deadline, "PUBACK").await? {
                Event::Outgoing(Outgoing::Publish(id)) => pkid = Some(id),
                Event::Incoming(Packet::PubAck(ack)) if Some(ack.pkid) == pkid => {
                    return self.check_puback(topic, &ack.reason);
                }
                _ => {}
            }
        }
    }

    async fn send(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), MqttError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| self.lost(e))
    }

    fn check_puback(&self, topic: &str, reason: &PubAckReason) -> Result<(), MqttError> {
        match reason {
            // No subscriber is not a failure: the broker took the message.
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
            other => Err(MqttError::Refused {
                endpoint: self.endpoint.clone(),
                what: format!("the message to {topic}"),
                reason: format!("PUBACK {other:?}"),
                transient: matches!(
                    other,
                    PubAckReason::QuotaExceeded
                        | PubAckReason::UnspecifiedError
                        | PubAckReason::ImplementationSpecificError
                        | PubAckReason::PacketIdentifierInUse
                ),
            }),
        }
    }

    /// One request on an AWS IoT MQTT API: publishes `payload` to `topic` and returns what
    /// comes on `<topic>/accepted` or `<topic>/rejected`. The caller subscribed to both before
    /// (answers to a request made before the subscription may never come).
    pub async fn request(&mut self, topic: &str, payload: Vec<u8>) -> Result<Answer, MqttError> {
        let accepted = format!("{topic}/accepted");
        let rejected = format!("{topic}/rejected");
        self.send(topic, payload).await?;
        let deadline = Wait::for_(self.timeouts.answer);
        let mut pkid = None;
        loop {
            match self
                .next_event(
                    deadline,
                    &format!("answer on {topic}/accepted or /rejected"),
                )
                .await?
            {
                Event::Outgoing(Outgoing::Publish(id)) => pkid = Some(id),
                Event::Incoming(Packet::PubAck(ack)) if Some(ack.pkid) == pkid => {
                    self.check_puback(topic, &ack.reason)?;
                }
                Event::Incoming(Packet::Publish(message)) => {
                    if message.topic.as_ref() == accepted.as_bytes() {
                        return Ok(Answer::Accepted(message.payload.to_vec()));
                    }
                    if message.topic.as_ref() == rejected.as_bytes() {
                        return Ok(Answer::Rejected(message.payload.to_vec()));
                    }
                }
                _ => {}
            }
        }
    }

    /// Ends the connection with a DISCONNECT (best effort: the work is done either way).
    pub async fn disconnect(mut self) {
        if self.client.disconnect().await.is_err() {
            return;
        }
        let deadline = Wait::for_(Duration::from_secs(2));
        while let Ok(event) = self.next_event(deadline, "DISCONNECT").await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_aws_iot_defaults() {
        let cases = [
            (
                "a1b2c3-ats.iot.eu-west-1.amazonaws.com",
                "a1b2c3-ats.iot.eu-west-1.amazonaws.com",
                8883,
                false,
            ),
            (
                "mqtts://a1b2c3-ats.iot.eu-west-1.amazonaws.com:443/",
                "a1b2c3-ats.iot.eu-west-1.amazonaws.com",
                443,
                true,
            ),
            ("127.0.0.1:42351", "127.0.0.1", 42351, false),
            ("[::1]:8883", "::1", 8883, false),
            ("::1", "::1", 8883, false),
        ];
        for (input, host, port, alpn) in cases {
            let e = Endpoint::parse(input, false);
            assert_eq!(
                e,
                Ok(Endpoint {
                    host: host.into(),
                    port,
                    alpn
                }),
                "{input}"
            );
        }
        assert_eq!(
            Endpoint::parse("127.0.0.1:9000", true).map(|e| e.alpn_protocols().len()),
            Ok(1)
        );
        assert_eq!(
            Endpoint::parse("h:9000", false).map(|e| e.to_string()),
            Ok("h:9000".to_owned())
        );
        for bad in [
            "",
            "mqtt://plain.example.com",
            "https://a.example.com",
            "a.example.com:0",
            "a.example.com:65536",
            "a.example.com:x",
            "a.example.com/path",
            "user@host",
            ":8883",
        ] {
            assert!(Endpoint::parse(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_busy_or_moving_broker_is_worth_asking_again() {
        assert!(connect_refusal_is_transient(&ConnectReturnCode::ServerBusy));
        assert!(connect_refusal_is_transient(
            &ConnectReturnCode::QuotaExceeded
        ));
        for final_refusal in [
            ConnectReturnCode::NotAuthorized,
            ConnectReturnCode::BadUserNamePassword,
            ConnectReturnCode::ClientIdentifierNotValid,
            ConnectReturnCode::Banned,
        ] {
            assert!(
                !connect_refusal_is_transient(&final_refusal),
                "{final_refusal:?}"
            );
        }
    }
}
