//! A machine API client: HTTPS with a client certificate of the cluster CA (a
//! cairnctl context's, or one the API server issues itself to reach the nodes), the
//! cluster CA pinned, and errors that say what to do.
//!
//! Server certificates must chain to the cluster CA and be valid now; their names are
//! not matched (see `cairn_api::tls`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::client_config::Context;
use cairn_api::machine_api::{ApiError, PORT};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A WebSocket to a node.
pub type WebSocket = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How long connecting and the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed, phrased for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client file's credentials are unusable.
    #[error("the context's credentials are unusable: {0}")]
    Credentials(String),
    /// The node could not be reached.
    #[error(
        "cannot reach {node}: {reason} (is the node up, and is {node} its machine API address? see -n/--nodes)"
    )]
    Unreachable {
        /// The node.
        node: String,
        /// What the network said.
        reason: String,
    },
    /// TLS failed.
    #[error("TLS with {node} failed: {reason}")]
    Tls {
        /// The node.
        node: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{node}: {status}: {}{}", .error.error, problems(&.error.problems))]
    Api {
        /// The node.
        node: String,
        /// The HTTP status.
        status: StatusCode,
        /// The node's explanation.
        error: ApiError,
    },
    /// The answer could not be understood.
    #[error("{node}: unexpected answer: {reason}")]
    Protocol {
        /// The node.
        node: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// The text of a TLS error among an error's causes, if there is one.
fn tls_alert(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(format!("{tls:?}"));
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(format!("{tls:?}"));
        }
        cause = current.source();
    }
    None
}

fn problems(list: &[String]) -> String {
    list.iter().map(|p| format!("\n  - {p}")).collect()
}

/// Accepts any server certificate (maintenance mode only: `--insecure`).
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection recipe for one node.
#[derive(Clone)]
pub struct NodeClient {
    node: String,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port` (default port [`PORT`]).
pub fn split_target(target: &str) -> (String, u16) {
    if let Some(rest) = target.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        let port = tail
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(PORT);
        return (host.to_owned(), port);
    }
    if target.parse::<IpAddr>().is_ok() {
        return (target.to_owned(), PORT);
    }
    match target.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(port) => (host.to_owned(), port),
            Err(_) => (target.to_owned(), PORT),
        },
        None => (target.to_owned(), PORT),
    }
}

impl NodeClient {
    /// A client authenticating with the context's certificate.
    pub fn new(target: &str, context: &Context) -> Result<Self, ClientError> {
        let tls = cairn_api::tls::client_config(&context.ca, &context.crt, &context.key)
            .map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(Self::with_tls(target, tls))
    }

    /// A client authenticating with `cert_pem` and `key_pem`, trusting nodes whose
    /// certificates chain to `ca_pem`.
    pub fn with_identity(
        target: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, ClientError> {
        let tls = cairn_api::tls::client_config(ca_pem, cert_pem, key_pem)
            .map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(Self::with_tls(target, tls))
    }

    /// A client for a node in maintenance mode: no client certificate, and the
    /// server's self-signed certificate is not checked.
    pub fn insecure(target: &str) -> Result<Self, ClientError> {
        let provider = cairn_api::tls::provider();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Credentials(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth();
        Ok(Self::with_tls(target, tls))
    }

    fn with_tls(target: &str, tls: rustls::ClientConfig) -> Self {
        let (host, port) = split_target(target);
        Self {
            node: target.to_owned(),
            host,
            port,
            tls: Arc::new(tls),
        }
    }

    /// The node as the user named it.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn tls_error(&self, err: &std::io::Error) -> ClientError {
        let text = err.to_string();
        let reason = if text.contains("UnknownIssuer") {
            "the node's certificate is not signed by this context's CA (wrong --context, or a node of another cluster)".to_owned()
        } else if text.contains("Expired") {
            "a certificate has expired (the node's, or yours: regenerate the client file)"
                .to_owned()
        } else if text.contains("CertificateRequired") {
            "the node requires a client certificate (use a context with credentials, or --insecure for a node in maintenance mode)".to_owned()
        } else if text.contains("UnknownCA")
            || text.contains("BadCertificate")
            || text.contains("DecryptError")
        {
            "the node refused your client certificate (signed by a foreign CA, or expired)"
                .to_owned()
        } else {
            text
        };
        ClientError::Tls {
            node: self.node.clone(),
            reason,
        }
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            node: self.node.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unreachable("connection timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let server_name = match self.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => {
                ServerName::try_from(self.host.clone()).map_err(|e| unreachable(e.to_string()))?
            }
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TlsConnector::from(Arc::clone(&self.tls)).connect(server_name, tcp),
        )
        .await
        .map_err(|_| unreachable("TLS handshake timed out".into()))?
        .map_err(|e| self.tls_error(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        tokio::spawn(connection.with_upgrades());
        let response = sender.send_request(request).await.map_err(|e| {
            // With TLS 1.3 a refused client certificate shows only when the answer is
            // read: an alert from the server somewhere in the error's causes.
            match tls_alert(&e) {
                Some(alert) => self.tls_error(&std::io::Error::other(alert)),
                None => self.protocol(cairn_api::error_chain(&e)),
            }
        })?;
        if response.status().is_success() || response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(response);
        }
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let error = serde_json::from_slice::<ApiError>(&body).unwrap_or(ApiError {
            error: String::from_utf8_lossy(&body).into_owned(),
            problems: Vec::new(),
        });
        Err(ClientError::Api {
            node: self.node.clone(),
            status,
            error,
        })
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            node: self.node.clone(),
            reason,
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.protocol(e.to_string()))
    }

    /// `GET` a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let text = self.get_text(path).await?;
        serde_json::from_str(&text).map_err(|e| self.protocol(e.to_string()))
    }

    /// `GET` a text document.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let response = self
            .send(self.request(Method::GET, path, Vec::new())?)
            .await?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e.to_string()))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST` a JSON body and read a JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| self.protocol(e.to_string()))?;
        let response = self.send(self.request(Method::POST, path, bytes)?).await?;
        self.json_body(response).await
    }

    /// `POST` raw bytes (an image archive) and read a JSON answer.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<T, ClientError> {
        let mut request = self.request(Method::POST, path, bytes)?;
        request.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_str(content_type)
                .map_err(|e| self.protocol(e.to_string()))?,
        );
        let response = self.send(request).await?;
        self.json_body(response).await
    }

    /// `DELETE` and read a JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .send(self.request(Method::DELETE, path, Vec::new())?)
            .await?;
        self.json_body(response).await
    }

    /// Reads a whole answer as JSON.
    async fn json_body<T: DeserializeOwned>(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<T, ClientError> {
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| self.protocol(e.to_string()))
    }

    /// Opens a WebSocket at `path` offering `protocols` (best first); returns it with
    /// the protocol the node chose.
    pub async fn websocket(
        &self,
        path: &str,
        protocols: &[&str],
    ) -> Result<(WebSocket, String), ClientError> {
        use tokio_tungstenite::tungstenite::handshake::client::generate_key;
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        let key = generate_key();
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::SEC_WEBSOCKET_VERSION, "13")
            .header(hyper::header::SEC_WEBSOCKET_KEY, &key)
            .header(hyper::header::SEC_WEBSOCKET_PROTOCOL, protocols.join(", "))
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.protocol(e.to_string()))?;
        let response = self.send(request).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(self.protocol(format!("{} instead of a WebSocket", response.status())));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if header(hyper::header::SEC_WEBSOCKET_ACCEPT) != Some(derive_accept_key(key.as_bytes())) {
            return Err(self.protocol("the WebSocket handshake's accept key is wrong".into()));
        }
        let protocol = header(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .filter(|p| protocols.contains(&p.as_str()))
            .ok_or_else(|| {
                self.protocol(format!(
                    "the node chose none of the WebSocket subprotocols {protocols:?}"
                ))
            })?;
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        Ok((socket, protocol))
    }

    /// `GET` a byte stream: the answer's body as it arrives (a log that follows).
    pub async fn get_body(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        let response = self
            .send(self.request(Method::GET, path, Vec::new())?)
            .await?;
        Ok(response.into_body())
    }

    /// `GET` a line stream, calling `line` for each line until the stream ends.
    pub async fn stream(&self, path: &str, mut line: impl FnMut(&str)) -> Result<(), ClientError> {
        let response = self
            .send(self.request(Method::GET, path, Vec::new())?)
            .await?;
        let mut body = response.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.protocol(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let text: Vec<u8> = pending.drain(..=end).collect();
                    line(String::from_utf8_lossy(&text[..text.len() - 1]).as_ref());
                }
            }
        }
        if !pending.is_empty() {
            // The stream ended mid-line: the rest is a line too.
            line(String::from_utf8_lossy(&pending).as_ref());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_host_and_port() {
        assert_eq!(split_target("10.5.0.2"), ("10.5.0.2".into(), PORT));
        assert_eq!(split_target("127.0.0.1:50001"), ("127.0.0.1".into(), 50001));
        assert_eq!(split_target("node-1"), ("node-1".into(), PORT));
        assert_eq!(split_target("fd00::2"), ("fd00::2".into(), PORT));
        assert_eq!(split_target("[fd00::2]:50002"), ("fd00::2".into(), 50002));
    }
}
