//! What nodes and clients send each other: Raft RPCs and client requests, as postcard
//! frames (`u32` big-endian length, then the bytes) of bounded size.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::StoreError;
use crate::raft_types::{NodeId, TypeConfig};
use crate::types::{RangeRequest, RangeResponse, Request, Response};

/// The largest frame accepted (Raft batches and snapshot chunks fit well below).
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// A message to a node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Rpc {
    /// Raft log replication.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<NodeId>),
    /// Raft snapshot transfer (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client's request (forwarded to the leader when needed).
    Client(ClientRequest),
    /// A client's request forwarded by another node (never forwarded again).
    Forwarded(ClientRequest),
    /// A client request on a multiplexed connection: served concurrently with the
    /// others on it, answered by [`Reply::Multiplexed`] with the same id.
    Multiplexed {
        /// Chosen by the sender, unique on the connection.
        id: u64,
        /// The request.
        request: ClientRequest,
        /// Whether the receiver may forward it again (to its leader).
        onward: bool,
    },
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Reply {
    /// To `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// To a client request.
    Client(Result<ClientReply, ClientError>),
    /// To [`Rpc::Multiplexed`].
    Multiplexed {
        /// The request's id.
        id: u64,
        /// Its answer.
        result: Result<ClientReply, ClientError>,
    },
}

/// What clients (and nodes forwarding for them) ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// A write, replicated through the leader.
    Write(Request),
    /// A read; linearizable reads are served by the leader after a quorum check.
    Read {
        /// What to read.
        range: RangeRequest,
        /// Linearizable (true) or serializable from the receiving node (false).
        linearizable: bool,
    },
    /// A new node asks to join as a voter.
    Join {
        /// Its id.
        id: NodeId,
        /// Its address for Raft traffic.
        addr: String,
        /// The cluster's join token.
        token: String,
    },
    /// A member is to leave.
    Remove {
        /// Its id.
        id: NodeId,
    },
    /// The group as the receiving node sees it.
    Members,
}

/// The answer to a [`ClientRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// A write's answer.
    Write(Response),
    /// A read's answer.
    Read(RangeResponse),
    /// Membership changed.
    Membership,
    /// The group.
    Members(crate::node::Members),
}

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    /// No leader is known now (election in progress, or no quorum).
    #[error("no leader available: {0}")]
    NoLeader(String),
    /// The store refused the request.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request could not be sent (the node was unreachable): it had no effect.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request was sent but no answer came; its outcome is unknown.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was refused (bad token, unknown member).
    #[error("refused: {0}")]
    Refused(String),
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the {MAX_FRAME} byte limit")]
    TooLarge(usize),
    /// The bytes are not a message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Writes one message as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
) -> Result<(), FrameError> {
    let bytes = postcard::to_allocvec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let length = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge(bytes.len()))?;
    writer.write_all(&length.to_be_bytes()).await?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame and decodes it; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    reader: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge(length));
    }
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes).await?;
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_or_garbage_frames_are_refused() {
        let mut buffer = Vec::new();
        let request = ClientRequest::Remove { id: 7 };
        write_frame(&mut buffer, &request).await.unwrap();
        let back: ClientRequest = read_frame(&mut buffer.as_slice()).await.unwrap().unwrap();
        assert_eq!(back, request);

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let err = read_frame::<_, ClientRequest>(&mut huge.as_slice())
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));

        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = read_frame::<_, ClientRequest>(&mut garbage.as_slice())
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)));

        assert!(
            read_frame::<_, ClientRequest>(&mut [].as_slice())
                .await
                .unwrap()
                .is_none()
        );
    }
}
