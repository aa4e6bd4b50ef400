//! Multiplexed connections for client requests a node forwards to another (to its
//! leader): one TLS connection per peer carries any number of requests at once, each
//! tagged with an id, and answers come back in whatever order they finish. A burst of
//! forwarded requests therefore never pays for new handshakes, and a slow request does
//! not hold up the ones behind it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tracing::debug;

use crate::protocol::{
    ClientError, ClientReply, ClientRequest, Reply, Rpc, read_frame, write_frame,
};
use crate::tcp::{CallError, Connection, Stream, TransportTls};

type Answer = Result<ClientReply, ClientError>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

/// One live multiplexed connection.
struct Link {
    writer: tokio::sync::Mutex<WriteHalf<Stream>>,
    pending: Pending,
    closed: Arc<AtomicBool>,
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads answers and hands each to the request waiting for it; when the connection
/// ends, every request still waiting learns it (its sender is dropped).
async fn read_answers(
    addr: String,
    mut reader: ReadHalf<Stream>,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    loop {
        match read_frame::<_, Reply>(&mut reader).await {
            Ok(Some(Reply::Multiplexed { id, result })) => {
                if let Some(waiter) = lock(&pending).remove(&id) {
                    let _ = waiter.send(result);
                }
            }
            Ok(Some(other)) => {
                debug!(%addr, reply = ?other, "store: unexpected reply on a multiplexed connection");
                break;
            }
            Ok(None) => break,
            Err(err) => {
                debug!(%addr, error = %err, "store: multiplexed connection ended");
                break;
            }
        }
    }
    closed.store(true, Ordering::SeqCst);
    lock(&pending).clear();
}

/// The multiplexed connection to one peer, dialled when first needed and again after
/// it breaks.
pub(crate) struct Mux {
    addr: String,
    tls: Arc<TransportTls>,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    next_id: AtomicU64,
}

impl Mux {
    /// A connection to `addr`, not yet dialled.
    pub(crate) fn new(addr: &str, tls: Arc<TransportTls>) -> Self {
        Self {
            addr: addr.to_owned(),
            tls,
            link: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// The live link, dialling one if there is none (callers arriving meanwhile wait
    /// for that one dial).
    async fn link(&self) -> Result<Arc<Link>, CallError> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| !l.closed.load(Ordering::SeqCst)) {
            return Ok(Arc::clone(link));
        }
        let stream = Connection::new(&self.addr, &self.tls).dial().await?;
        let (reader, writer) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_answers(
            self.addr.clone(),
            reader,
            Arc::clone(&pending),
            Arc::clone(&closed),
        ));
        let link = Arc::new(Link {
            writer: tokio::sync::Mutex::new(writer),
            pending,
            closed,
        });
        *slot = Some(Arc::clone(&link));
        Ok(link)
    }

    /// Sends `request` (`onward`: the peer may forward it again) and waits for its
    /// answer within `deadline`.
    pub(crate) async fn call(
        &self,
        request: ClientRequest,
        onward: bool,
        deadline: Duration,
    ) -> Result<ClientReply, ClientError> {
        let link = self
            .link()
            .await
            .map_err(|e| ClientError::NotSent(e.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = oneshot::channel();
        lock(&link.pending).insert(id, sender);
        let rpc = Rpc::Multiplexed {
            id,
            request,
            onward,
        };
        let exchange = async {
            {
                let mut writer = link.writer.lock().await;
                if let Err(err) = write_frame(&mut *writer, &rpc).await {
                    link.closed.store(true, Ordering::SeqCst);
                    return Err(ClientError::Unavailable(format!(
                        "{}: connection broke while sending: {err}",
                        self.addr
                    )));
                }
            }
            answer.await.map_err(|_| {
                ClientError::Unavailable(format!(
                    "{}: connection closed before the answer",
                    self.addr
                ))
            })?
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => {
                lock(&link.pending).remove(&id);
                Err(ClientError::Unavailable(format!(
                    "{}: no answer within {deadline:?}",
                    self.addr
                )))
            }
        }
    }
}
