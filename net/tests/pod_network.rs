//! Host tier (needs root): the pod network in network namespaces the tests create. A
//! "node" namespace holds the bridge; "pod" namespaces get attached; an "outside"
//! namespace stands for the world beyond the cluster; two node namespaces on one
//! link stand for two nodes routing each other's pod CIDRs.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use cairn_net::netns::NetNamespace;
use cairn_net::pod_network::{PeerRoute, PodNetwork, PodNetworkConfig, host_link_name};
use cairn_net::{Link, Netlink};
use ipnet::{IpNet, Ipv4Net};

fn namespace() -> NetNamespace {
    NetNamespace::create().expect("create a network namespace (run as root)")
}

fn config(dir: &std::path::Path, pod_cidr: &str) -> PodNetworkConfig {
    PodNetworkConfig {
        bridge: "cairn0".into(),
        pod_cidr: pod_cidr.parse().unwrap(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        mtu: None,
        ipam_state: dir.join("ipam.json"),
    }
}

/// Listens on `address:port` inside `ns`; the returned thread accepts one connection
/// and answers with the peer address it saw.
fn echo_peer(ns: &NetNamespace, address: Ipv4Addr, port: u16) -> std::thread::JoinHandle<()> {
    let listener = ns
        .run(|| TcpListener::bind((address, port)))
        .unwrap()
        .expect("listen inside the namespace");
    std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        stream
            .write_all(peer.ip().to_string().as_bytes())
            .expect("answer");
    })
}

/// Connects from inside `ns` to `to` and returns what the server answered (the
/// source address it saw).
fn seen_from(ns: &NetNamespace, to: SocketAddr) -> String {
    ns.run(move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        let mut seen = String::new();
        stream.read_to_string(&mut seen).expect("read the answer");
        seen
    })
    .unwrap()
}

/// Joins two namespaces with a veth pair: `a_name` with `a_address` in `a`, `b_name`
/// with `b_address` in `b`.
fn wire(
    a: &NetNamespace,
    a_name: &str,
    a_address: &str,
    b: &NetNamespace,
    b_name: &str,
    b_address: &str,
) {
    let (a_address, b_address): (IpNet, IpNet) =
        (a_address.parse().unwrap(), b_address.parse().unwrap());
    // The far end gets its name inside `b`: both ends may share one.
    const IN_TRANSIT: &str = "wire-peer";
    let b_path = b.path();
    a.run_async(|| async move {
        let netlink = Netlink::connect().unwrap();
        netlink.add_veth(a_name, IN_TRANSIT).await.unwrap();
        let peer = netlink.link_named(IN_TRANSIT).await.unwrap().unwrap();
        let b_file = std::fs::File::open(&b_path).unwrap();
        use std::os::fd::AsFd;
        netlink
            .move_to_namespace(&peer, b_file.as_fd())
            .await
            .unwrap();
        let link = netlink.link_named(a_name).await.unwrap().unwrap();
        netlink.add_address(&link, a_address).await.unwrap();
        netlink.set_up(&link).await.unwrap();
    })
    .unwrap();
    b.run_async(|| async move {
        let netlink = Netlink::connect().unwrap();
        let link = netlink.link_named(IN_TRANSIT).await.unwrap().unwrap();
        netlink.rename_up(&link, b_name).await.unwrap();
        netlink.add_address(&link, b_address).await.unwrap();
        netlink.set_up(&link).await.unwrap();
    })
    .unwrap();
}

fn links(ns: &NetNamespace) -> Vec<Link> {
    ns.run_async(|| async { Netlink::connect().unwrap().links().await.unwrap() })
        .unwrap()
}

fn pod_address(pod: &NetNamespace) -> Vec<IpNet> {
    pod.run_async(|| async {
        let netlink = Netlink::connect().unwrap();
        let eth0 = netlink
            .link_named("eth0")
            .await
            .unwrap()
            .expect("eth0 in the pod");
        assert!(eth0.up, "eth0 is up");
        let mut addresses = netlink.addresses(&eth0).await.unwrap();
        addresses.retain(|a| matches!(a, IpNet::V4(_)));
        addresses
    })
    .unwrap()
}

#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn pods_reach_each_other_and_the_outside_world_through_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = namespace();
    let outside = namespace();
    // The node's uplink to the outside world, which knows no pod route.
    wire(
        &node,
        "uplink",
        "192.0.2.1/24",
        &outside,
        "world",
        "192.0.2.2/24",
    );
    let (pod_a, pod_b) = (namespace(), namespace());
    let (path_a, path_b) = (pod_a.path(), pod_b.path());
    let config = config(dir.path(), "10.244.1.0/24");
    let (a, b) = node
        .run_async(|| async {
            let network = PodNetwork::start(config.clone()).await.expect("start");
            let a = network.attach("pod-a", &path_a).await.expect("attach a");
            let b = network.attach("pod-b", &path_b).await.expect("attach b");
            (a, b)
        })
        .unwrap();
    assert_eq!(a.address, "10.244.1.2/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(b.address, "10.244.1.3/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(a.gateway, Ipv4Addr::new(10, 244, 1, 1));
    assert_eq!(pod_address(&pod_a), vec![IpNet::V4(a.address)]);
    let bridge = links(&node)
        .into_iter()
        .find(|l| l.name == "cairn0")
        .expect("bridge");
    assert!(bridge.up);

    // Pod to pod on one node: direct, the source is the pod's own address.
    let server = echo_peer(&pod_b, b.address.addr(), 8080);
    let seen = seen_from(&pod_a, SocketAddr::new(IpAddr::V4(b.address.addr()), 8080));
    server.join().unwrap();
    assert_eq!(seen, a.address.addr().to_string());

    // Pod to the outside world: masqueraded to the node's uplink address (the
    // outside has no route back to 10.244.0.0/16, so without it nothing answers).
    let server = echo_peer(&outside, Ipv4Addr::new(192, 0, 2, 2), 8081);
    let seen = seen_from(&pod_a, "192.0.2.2:8081".parse().unwrap());
    server.join().unwrap();
    assert_eq!(seen, "192.0.2.1");

    // Detach: the pair goes and the address is free; a second start over the same
    // state keeps b's address, and attaching b again (a restarted runtime) keeps it
    // and its pair too.
    let b_link = links(&node)
        .into_iter()
        .find(|l| l.name == b.host_link)
        .expect("b's pair");
    let (path_b, config2) = (pod_b.path(), config.clone());
    let (attached, again) = node
        .run_async(|| async move {
            let network = PodNetwork::start(config2).await.expect("start again");
            network.detach("pod-a").await.expect("detach a");
            network.detach("pod-a").await.expect("detach twice is fine");
            network.settle().await;
            let again = network
                .attach("pod-b", &path_b)
                .await
                .expect("attach b again");
            (network.attached().await, again)
        })
        .unwrap();
    assert_eq!(again.address, b.address);
    assert_eq!(attached.keys().collect::<Vec<_>>(), ["pod-b"]);
    let names: Vec<String> = links(&node).into_iter().map(|l| l.name).collect();
    assert!(!names.contains(&host_link_name("pod-a")), "{names:?}");
    assert!(names.contains(&host_link_name("pod-b")), "{names:?}");
    let b_link_again = links(&node)
        .into_iter()
        .find(|l| l.name == b.host_link)
        .expect("b's pair");
    assert_eq!(
        b_link_again.index, b_link.index,
        "the same pair, not a new one"
    );
    assert!(
        links(&pod_a).iter().all(|l| l.name != "eth0"),
        "a's end went with the pair"
    );
    assert_eq!(pod_address(&pod_b), vec![IpNet::V4(b.address)]);
}

#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn two_nodes_route_pod_cidrs_to_each_other_and_repair_a_removed_route() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_c = tempfile::tempdir().unwrap();
    let (node_a, node_c) = (namespace(), namespace());
    wire(
        &node_a,
        "eth0",
        "172.30.0.1/24",
        &node_c,
        "eth0",
        "172.30.0.3/24",
    );
    let (pod_a, pod_c) = (namespace(), namespace());
    let peers = [
        PeerRoute {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            via: "172.30.0.1".parse().unwrap(),
        },
        PeerRoute {
            pod_cidr: "10.244.3.0/24".parse().unwrap(),
            via: "172.30.0.3".parse().unwrap(),
        },
    ];
    let (config_a, path_a) = (config(dir_a.path(), "10.244.1.0/24"), pod_a.path());
    let a = node_a
        .run_async(|| async {
            let network = PodNetwork::start(config_a).await.unwrap();
            assert_eq!(
                network.set_peer_routes(&peers).await.unwrap(),
                1,
                "own CIDR skipped"
            );
            assert_eq!(
                network.set_peer_routes(&peers).await.unwrap(),
                0,
                "idempotent"
            );
            network.attach("pod-a", &path_a).await.unwrap()
        })
        .unwrap();
    let (config_c, path_c) = (config(dir_c.path(), "10.244.3.0/24"), pod_c.path());
    let c = node_c
        .run_async(|| async {
            let network = PodNetwork::start(config_c.clone()).await.unwrap();
            network.set_peer_routes(&peers).await.unwrap();
            network.attach("pod-c", &path_c).await.unwrap()
        })
        .unwrap();

    // Across nodes the pod keeps its address: no masquerade inside the pod subnet.
    let server = echo_peer(&pod_c, c.address.addr(), 9000);
    let seen = seen_from(&pod_a, SocketAddr::new(IpAddr::V4(c.address.addr()), 9000));
    server.join().unwrap();
    assert_eq!(seen, a.address.addr().to_string());

    // A route removed by hand comes back at the next reconcile; a peer that leaves
    // loses its route; routes of others are untouched.
    let config_c2 = config(dir_c.path(), "10.244.3.0/24");
    node_c
        .run_async(|| async {
            let netlink = Netlink::connect().unwrap();
            let eth0 = netlink.link_named("eth0").await.unwrap().unwrap();
            netlink
                .add_route(
                    &eth0,
                    "10.99.0.0/16".parse().unwrap(),
                    Some("172.30.0.1".parse().unwrap()),
                )
                .await
                .unwrap();
            netlink
                .del_gateway_route(
                    "10.244.1.0/24".parse().unwrap(),
                    "172.30.0.1".parse().unwrap(),
                )
                .await
                .unwrap();
            let network = PodNetwork::start(config_c2).await.unwrap();
            assert_eq!(
                network.set_peer_routes(&peers).await.unwrap(),
                1,
                "repaired"
            );
            assert_eq!(
                network.set_peer_routes(&peers[1..]).await.unwrap(),
                1,
                "removed"
            );
            let routes = netlink.routes().await.unwrap();
            let to = |net: &str| routes.iter().any(|r| r.to == net.parse::<IpNet>().unwrap());
            assert!(!to("10.244.1.0/24"), "{routes:?}");
            assert!(to("10.99.0.0/16"), "another's route stays: {routes:?}");
        })
        .unwrap();
}

#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn two_thousand_attach_detach_cycles_leak_no_link_and_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = namespace();
    // Pods have namespaces of their own; a handful taken in turn.
    let pods: Vec<NetNamespace> = (0..16).map(|_| namespace()).collect();
    let paths: Vec<_> = pods.iter().map(NetNamespace::path).collect();
    let config = config(dir.path(), "10.244.7.0/24");
    let before = node
        .run_async(|| async {
            let network = PodNetwork::start(config.clone()).await.unwrap();
            let before = network.config().clone();
            let mut seen = std::collections::BTreeSet::new();
            for cycle in 0..2000 {
                let owner = format!("pod-{cycle}");
                let path = &paths[cycle % paths.len()];
                let attached = network.attach(&owner, path).await.unwrap();
                seen.insert(attached.address);
                network.detach(&owner).await.unwrap();
            }
            assert!(network.attached().await.is_empty(), "an address leaked");
            network.settle().await;
            // Next-fit went round the /24 several times.
            assert_eq!(seen.len(), 253);
            before
        })
        .unwrap();
    assert_eq!(before.pod_cidr, "10.244.7.0/24".parse::<Ipv4Net>().unwrap());
    let names: Vec<String> = links(&node).into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo", "cairn0"], "a veth leaked");
    for pod in &pods {
        assert_eq!(
            links(pod).into_iter().map(|l| l.name).collect::<Vec<_>>(),
            ["lo"]
        );
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ipam.json")).unwrap()).unwrap();
    assert_eq!(state["allocations"], serde_json::json!({}));
}

#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn a_node_cidr_outside_the_cluster_subnet_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let node = namespace();
    let mut config = config(dir.path(), "10.245.1.0/24");
    config.cluster_cidr = "10.244.0.0/16".parse().unwrap();
    let error = node
        .run_async(|| async { PodNetwork::start(config).await.unwrap_err().to_string() })
        .unwrap();
    assert!(
        error.contains("10.245.1.0/24") && error.contains("10.244.0.0/16"),
        "{error}"
    );
}
