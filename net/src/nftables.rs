//! nf_tables rules over netlink (`NETLINK_NETFILTER`), without the `nft` binary or
//! libnftnl: the handful of messages the pod network needs, encoded here.
//!
//! Cairn owns one table, `ip cairn`, and always replaces it whole in one atomic batch
//! (add, delete, add again, then its chains and rules), so applying is idempotent and
//! a half-written ruleset is never visible. Today the table holds the pod network's
//! outbound masquerade: traffic from this node's pod CIDR to anything outside the
//! cluster's pod subnet leaves with the node's address.
//!
//! No crate fills this gap under our licence: `rustables` (pure Rust) is GPL-3.0 and
//! `nftnl` binds the C libnftnl, which the static PID 1 would have to link.

use std::time::Duration;

use ipnet::Ipv4Net;
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

/// The table Cairn owns.
pub const TABLE: &str = "cairn";

/// Why the ruleset could not be written.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netfilter netlink socket could not be opened or used.
    #[error("nftables: netlink socket: {what}")]
    Socket {
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a message of the batch (the whole batch is then undone).
    #[error("nftables: the kernel refused {operation}")]
    Refused {
        /// Which message, e.g. `add rule postrouting`.
        operation: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The kernel did not answer every message of the batch.
    #[error("nftables: no answer to {operation} within {timeout:?}")]
    NoAnswer {
        /// The first unanswered message.
        operation: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// The masquerade rule of a node's pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masquerade {
    /// This node's pod CIDR: the sources that are rewritten.
    pub pod_cidr: Ipv4Net,
    /// The cluster's pod subnet: destinations inside it keep the pod's address.
    pub cluster_cidr: Ipv4Net,
}

// Constants of <linux/netfilter/nfnetlink.h> and <linux/netfilter/nf_tables.h>.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_ACCEPT: u32 = 1;
/// `srcnat`, the priority nft gives NAT in postrouting.
const NF_IP_PRI_NAT_SRC: u32 = 100;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_REG_1: u32 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
/// Offsets of the source and destination address in an IPv4 header.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;

/// The postrouting chain of Cairn's table.
const POSTROUTING: &str = "postrouting";
/// How long the kernel may take to answer a batch.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One netlink message under construction: header, `nfgenmsg`, attributes.
struct MessageWriter {
    buf: Vec<u8>,
    /// Starts of the nested attributes still open.
    nests: Vec<usize>,
}

impl MessageWriter {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    fn string(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attribute(kind, &bytes)
    }

    fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attribute(kind, &value.to_be_bytes())
    }

    fn open(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn close(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// `NFTA_DATA_VALUE` nested in `kind`.
    fn data(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.open(kind).attribute(NFTA_DATA_VALUE, value).close()
    }

    fn finish(mut self) -> Vec<u8> {
        debug_assert!(self.nests.is_empty(), "every nest is closed");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A batch of nf_tables messages, each with the operation it stands for.
struct Batch {
    bytes: Vec<u8>,
    operations: Vec<(u32, String)>,
    next_seq: u32,
}

impl Batch {
    fn new() -> Self {
        let begin = MessageWriter::new(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            1,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        Self {
            bytes: begin.finish(),
            operations: Vec::new(),
            next_seq: 2,
        }
    }

    /// Adds a message built by `fill`, acknowledged by the kernel.
    fn push(
        &mut self,
        operation: impl Into<String>,
        message: u16,
        create: bool,
        fill: impl FnOnce(&mut MessageWriter),
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut flags = NLM_F_REQUEST | NLM_F_ACK;
        if create {
            flags |= NLM_F_CREATE;
        }
        let mut writer = MessageWriter::new(
            (NFNL_SUBSYS_NFTABLES << 8) | message,
            flags,
            seq,
            NFPROTO_IPV4,
            0,
        );
        fill(&mut writer);
        self.bytes.extend_from_slice(&writer.finish());
        self.operations.push((seq, operation.into()));
    }

    fn finish(mut self) -> (Vec<u8>, Vec<(u32, String)>) {
        let end = MessageWriter::new(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.next_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        self.bytes.extend_from_slice(&end.finish());
        (self.bytes, self.operations)
    }
}

/// Appends `ip <saddr|daddr> <op> <net>` as payload, bitwise and cmp expressions.
fn match_ipv4(writer: &mut MessageWriter, offset: u32, op: u32, net: Ipv4Net) {
    let mask = net.netmask().octets();
    writer
        .open(NFTA_LIST_ELEM)
        .string(NFTA_EXPR_NAME, "payload")
        .open(NFTA_EXPR_DATA)
        .be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
        .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER)
        .be32(NFTA_PAYLOAD_OFFSET, offset)
        .be32(NFTA_PAYLOAD_LEN, 4)
        .close()
        .close();
    writer
        .open(NFTA_LIST_ELEM)
        .string(NFTA_EXPR_NAME, "bitwise")
        .open(NFTA_EXPR_DATA)
        .be32(NFTA_BITWISE_SREG, NFT_REG_1)
        .be32(NFTA_BITWISE_DREG, NFT_REG_1)
        .be32(NFTA_BITWISE_LEN, 4)
        .data(NFTA_BITWISE_MASK, &mask)
        .data(NFTA_BITWISE_XOR, &[0; 4])
        .close()
        .close();
    writer
        .open(NFTA_LIST_ELEM)
        .string(NFTA_EXPR_NAME, "cmp")
        .open(NFTA_EXPR_DATA)
        .be32(NFTA_CMP_SREG, NFT_REG_1)
        .be32(NFTA_CMP_OP, op)
        .data(NFTA_CMP_DATA, &net.network().octets())
        .close()
        .close();
}

/// The batch that replaces Cairn's table with one holding `masquerade`.
fn replace_table(masquerade: Masquerade) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut batch = Batch::new();
    let table = |w: &mut MessageWriter| {
        w.string(NFTA_TABLE_NAME, TABLE);
    };
    // Adding first makes the delete valid when the table does not exist yet.
    batch.push(
        format!("add table ip {TABLE}"),
        NFT_MSG_NEWTABLE,
        true,
        table,
    );
    batch.push(
        format!("delete table ip {TABLE}"),
        NFT_MSG_DELTABLE,
        false,
        table,
    );
    batch.push(
        format!("add table ip {TABLE}"),
        NFT_MSG_NEWTABLE,
        true,
        table,
    );
    batch.push(
        format!("add chain ip {TABLE} {POSTROUTING}"),
        NFT_MSG_NEWCHAIN,
        true,
        |w| {
            w.string(NFTA_CHAIN_TABLE, TABLE)
                .string(NFTA_CHAIN_NAME, POSTROUTING)
                .open(NFTA_CHAIN_HOOK)
                .be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING)
                .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC)
                .close()
                .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                .string(NFTA_CHAIN_TYPE, "nat");
        },
    );
    batch.push(
        format!(
            "add rule ip {TABLE} {POSTROUTING} ip saddr {} ip daddr != {} masquerade",
            masquerade.pod_cidr, masquerade.cluster_cidr
        ),
        NFT_MSG_NEWRULE,
        true,
        |w| {
            w.string(NFTA_RULE_TABLE, TABLE)
                .string(NFTA_RULE_CHAIN, POSTROUTING)
                .open(NFTA_RULE_EXPRESSIONS);
            match_ipv4(w, IPV4_SADDR, NFT_CMP_EQ, masquerade.pod_cidr);
            match_ipv4(w, IPV4_DADDR, NFT_CMP_NEQ, masquerade.cluster_cidr);
            w.open(NFTA_LIST_ELEM)
                .string(NFTA_EXPR_NAME, "masq")
                .close()
                .close();
        },
    );
    batch.finish()
}

/// Replaces Cairn's table (in the caller's network namespace) with the pod network's
/// masquerade rule. Atomic: on error the previous table stays as it was.
pub fn apply_masquerade(masquerade: Masquerade) -> Result<(), NftError> {
    let (bytes, operations) = replace_table(masquerade);
    send_batch(&bytes, &operations)
}

/// Sends a batch and waits for the kernel's answer to each message.
fn send_batch(bytes: &[u8], operations: &[(u32, String)]) -> Result<(), NftError> {
    let socket_error = |what| move |source| NftError::Socket { what, source };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(socket_error("open"))?;
    socket.bind_auto().map_err(socket_error("bind"))?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0),
    )
    .map_err(|errno| NftError::Socket {
        what: "set the receive timeout",
        source: errno.into(),
    })?;
    socket.send(bytes, 0).map_err(socket_error("send"))?;
    let mut unanswered: Vec<&(u32, String)> = operations.iter().collect();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while !unanswered.is_empty() {
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(NftError::NoAnswer {
                    operation: unanswered[0].1.clone(),
                    timeout: ANSWER_TIMEOUT,
                });
            }
            Err(e) => return Err(socket_error("receive")(e)),
        };
        for (seq, errno) in acknowledgements(&buf) {
            let Some(position) = unanswered.iter().position(|(s, _)| *s == seq) else {
                continue;
            };
            let (_, operation) = unanswered.remove(position);
            if errno != 0 {
                return Err(NftError::Refused {
                    operation: operation.clone(),
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
        }
    }
    Ok(())
}

/// The `(sequence number, errno)` of each `NLMSG_ERROR` answer in `bytes` (errno 0 is
/// an acknowledgement).
fn acknowledgements(mut bytes: &[u8]) -> Vec<(u32, i32)> {
    let mut answers = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        if kind == NLMSG_ERROR && len >= 20 {
            let code = i32::from_ne_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
            // An answer carries the sequence number of the request it answers.
            let seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            answers.push((seq, -code));
        }
        let aligned = len.div_ceil(4) * 4;
        bytes = &bytes[aligned.min(bytes.len())..];
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attributes at the top of a message (after the 20 header bytes).
    fn attributes(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= 4 {
            let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
            let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
            out.push((kind, bytes[4..len].to_vec()));
            bytes = &bytes[(len.div_ceil(4) * 4).min(bytes.len())..];
        }
        out
    }

    /// Splits a batch into its messages.
    fn messages(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            out.push(bytes[..len].to_vec());
            bytes = &bytes[len..];
        }
        out
    }

    fn masquerade() -> Masquerade {
        Masquerade {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        }
    }

    #[test]
    fn the_batch_is_framed_by_begin_and_end_and_replaces_the_table() {
        let (bytes, operations) = replace_table(masquerade());
        let messages = messages(&bytes);
        assert_eq!(messages.len(), 7, "begin, 5 operations, end");
        let kind = |m: &Vec<u8>| u16::from_ne_bytes([m[4], m[5]]);
        assert_eq!(kind(&messages[0]), NFNL_MSG_BATCH_BEGIN);
        assert_eq!(kind(&messages[6]), NFNL_MSG_BATCH_END);
        let table = |op| (NFNL_SUBSYS_NFTABLES << 8) | op;
        let kinds: Vec<u16> = messages[1..6].iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                table(NFT_MSG_NEWTABLE),
                table(NFT_MSG_DELTABLE),
                table(NFT_MSG_NEWTABLE),
                table(NFT_MSG_NEWCHAIN),
                table(NFT_MSG_NEWRULE)
            ]
        );
        // The batch begin names the nftables subsystem (big-endian res_id).
        assert_eq!(&messages[0][18..20], &NFNL_SUBSYS_NFTABLES.to_be_bytes());
        // Sequence numbers of the operations are the ones the acks are matched with.
        let seqs: Vec<u32> = messages[1..6]
            .iter()
            .map(|m| u32::from_ne_bytes([m[8], m[9], m[10], m[11]]))
            .collect();
        assert_eq!(seqs, operations.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        assert!(operations[4].1.contains("ip saddr 10.244.1.0/24"));
    }

    #[test]
    fn the_rule_matches_source_and_destination_then_masquerades() {
        let (bytes, _) = replace_table(masquerade());
        let rule = &messages(&bytes)[5];
        let top = attributes(&rule[20..]);
        assert_eq!(top[0], (NFTA_RULE_TABLE, b"cairn\0".to_vec()));
        assert_eq!(top[1], (NFTA_RULE_CHAIN, b"postrouting\0".to_vec()));
        assert_eq!(top[2].0, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED);
        let expressions = attributes(&top[2].1);
        let names: Vec<String> = expressions
            .iter()
            .map(|(_, e)| {
                let name = &attributes(e)[0].1;
                String::from_utf8_lossy(&name[..name.len() - 1]).into_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "payload", "bitwise", "cmp", "payload", "bitwise", "cmp", "masq"
            ]
        );
        // The first cmp compares with the pod CIDR's network, the second (≠) with the
        // cluster's.
        let cmp_data = |index: usize| {
            let data = &attributes(&expressions[index].1)[1].1;
            let cmp = attributes(data);
            let op = u32::from_be_bytes(cmp[1].1.clone().try_into().unwrap());
            (op, attributes(&cmp[2].1)[0].1.clone())
        };
        assert_eq!(cmp_data(2), (NFT_CMP_EQ, vec![10, 244, 1, 0]));
        assert_eq!(cmp_data(5), (NFT_CMP_NEQ, vec![10, 244, 0, 0]));
        // The masks are the prefixes' netmasks.
        let mask = |index: usize| {
            let data = &attributes(&expressions[index].1)[1].1;
            attributes(&attributes(data)[3].1)[0].1.clone()
        };
        assert_eq!(mask(1), vec![255, 255, 255, 0]);
        assert_eq!(mask(4), vec![255, 255, 0, 0]);
    }

    #[test]
    fn acknowledgements_are_read_with_their_sequence_numbers() {
        let mut answer = Vec::new();
        for (seq, code) in [(2u32, 0i32), (3, -libc::ENOENT)] {
            answer.extend_from_slice(&36u32.to_ne_bytes());
            answer.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            answer.extend_from_slice(&0u16.to_ne_bytes());
            answer.extend_from_slice(&seq.to_ne_bytes());
            answer.extend_from_slice(&0u32.to_ne_bytes());
            answer.extend_from_slice(&code.to_ne_bytes());
            // The quoted request header.
            answer.extend_from_slice(&20u32.to_ne_bytes());
            answer.extend_from_slice(&0u32.to_ne_bytes());
            answer.extend_from_slice(&seq.to_ne_bytes());
            answer.extend_from_slice(&0u32.to_ne_bytes());
        }
        assert_eq!(acknowledgements(&answer), vec![(2, 0), (3, libc::ENOENT)]);
    }
}
