//! Host tier (needs root): applies interface specs to real links inside a network
//! namespace the test creates, and reads the result back from the kernel; the DHCP
//! client against dnsmasq (acquire, renew, rebind, a lease given up at its end).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use cairn_api::machine_config::{Interface, LinkKind, LinkSelector, Route};
use cairn_net::dhcp::{Extension, Lease, LeaseBoard};
use cairn_net::netns::NetNamespace;
use cairn_net::reconcile::{Reconciler, lease_layer};
use cairn_net::{Netlink, interfaces};

fn namespace() -> NetNamespace {
    NetNamespace::create().expect("create a network namespace (run as root)")
}

#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn configured_interface_gets_mtu_addresses_and_routes_and_reapplying_changes_nothing() {
    let ns = namespace();
    ns.run_async(|| async {
        let netlink = Netlink::connect().expect("netlink");
        netlink
            .add_veth("cairn0", "cairn1")
            .await
            .expect("veth pair");
        let spec = Interface {
            selector: LinkSelector::Name("cairn0".into()),
            kind: LinkKind::Existing,
            addresses: vec![
                "10.9.0.2/24".parse().unwrap(),
                "fd09::2/64".parse().unwrap(),
            ],
            mtu: Some(1400),
            dhcp: false,
            routes: vec![
                Route {
                    to: "10.10.0.0/16".parse().unwrap(),
                    via: Some("10.9.0.1".parse().unwrap()),
                },
                Route {
                    to: "10.11.0.0/16".parse().unwrap(),
                    via: None,
                },
            ],
        };
        interfaces::apply(&netlink, &spec, Duration::from_secs(1))
            .await
            .expect("apply once");
        let link = interfaces::apply(&netlink, &spec, Duration::from_secs(1))
            .await
            .expect("apply again is idempotent");
        assert_eq!(link.mtu, Some(1400));
        assert!(link.up);
        let addresses = netlink.addresses(&link).await.expect("addresses");
        for wanted in &spec.addresses {
            assert!(
                addresses.contains(wanted),
                "{wanted} missing from {addresses:?}"
            );
        }
        let routes = netlink.routes().await.expect("routes");
        let gateway_route = routes
            .iter()
            .filter(|r| r.to == "10.10.0.0/16".parse().unwrap())
            .collect::<Vec<_>>();
        assert_eq!(
            gateway_route.len(),
            1,
            "exactly one route after two applies: {routes:?}"
        );
        assert_eq!(gateway_route[0].via, Some("10.9.0.1".parse().unwrap()));
        assert_eq!(gateway_route[0].link_index, Some(link.index));
        assert!(
            routes
                .iter()
                .any(|r| r.to == "10.11.0.0/16".parse().unwrap() && r.via.is_none()),
            "{routes:?}"
        );

        // Removing what a config no longer names.
        netlink
            .del_address(&link, spec.addresses[0])
            .await
            .expect("remove address");
        netlink
            .del_route(&link, spec.routes[0].to, spec.routes[0].via)
            .await
            .expect("remove route");
        netlink
            .del_route(&link, spec.routes[0].to, spec.routes[0].via)
            .await
            .expect("removing a route twice is not an error");
        let addresses = netlink.addresses(&link).await.expect("addresses");
        assert!(!addresses.contains(&spec.addresses[0]) && addresses.contains(&spec.addresses[1]));
        let routes = netlink.routes().await.expect("routes");
        assert!(
            !routes.iter().any(|r| r.to == spec.routes[0].to),
            "{routes:?}"
        );
    })
    .expect("inside namespace");
}

#[test]
#[ignore = "needs root (network namespaces) and dnsmasq; run by cargo xtask test"]
fn dhcp_client_gets_and_applies_a_lease_from_a_real_server() {
    // Client and server in namespaces of their own, joined by a veth pair, as two
    // machines on one wire (in one namespace the kernel would pick the server's own
    // address as the client's source and drop the packets as martians).
    let client_ns = namespace();
    let server_ns = namespace();
    client_ns
        .run_async(|| async {
            let netlink = Netlink::connect().expect("netlink");
            netlink
                .add_veth("cairn0", "cairn1")
                .await
                .expect("veth pair");
            let links = netlink.links().await.expect("links");
            let peer = links.iter().find(|l| l.name == "cairn1").expect("peer");
            netlink
                .move_to_namespace(peer, server_ns.as_fd())
                .await
                .expect("move the server end");
        })
        .expect("client namespace");
    server_ns
        .run_async(|| async {
            let netlink = Netlink::connect().expect("netlink");
            let server_side = Interface {
                selector: LinkSelector::Name("cairn1".into()),
                kind: LinkKind::Existing,
                addresses: vec!["10.77.0.1/24".parse().unwrap()],
                mtu: None,
                routes: Vec::new(),
                dhcp: false,
            };
            interfaces::apply(&netlink, &server_side, Duration::from_secs(1))
                .await
                .expect("server address");
        })
        .expect("server namespace");
    let leases = tempfile::NamedTempFile::new().expect("lease file");
    let server = server_ns
        .run(|| {
            std::process::Command::new("dnsmasq")
                .args([
                    "--no-daemon",
                    "--interface=cairn1",
                    "--bind-interfaces",
                    "--port=0",
                    "--dhcp-range=10.77.0.50,10.77.0.60,12h",
                    "--dhcp-option=option:router,10.77.0.1",
                    "--dhcp-option=option:dns-server,10.77.0.1",
                ])
                .arg(format!("--dhcp-leasefile={}", leases.path().display()))
                .spawn()
                .expect("start dnsmasq (install dnsmasq-base)")
        })
        .expect("server namespace");
    let server = ServerGuard(server);
    let lease = client_ns
        .run_async(|| async {
            let netlink = Netlink::connect().expect("netlink");
            let client = interfaces::wait_for_link(
                &netlink,
                &LinkSelector::Name("cairn0".into()),
                Duration::ZERO,
            )
            .await
            .expect("client link");
            netlink.set_up(&client).await.expect("up");
            let lease = cairn_net::dhcp::acquire(&client, Duration::from_secs(20))
                .await
                .expect("lease");
            let octet = lease.address.addr().octets()[3];
            assert!((50..=60).contains(&octet), "{lease:?}");
            assert_eq!(lease.address.prefix_len(), 24);
            assert_eq!(lease.router, Some("10.77.0.1".parse().unwrap()));
            assert_eq!(
                lease.dns,
                ["10.77.0.1".parse::<std::net::Ipv4Addr>().unwrap()]
            );
            cairn_net::dhcp::apply(&netlink, &client, &lease)
                .await
                .expect("apply");
            let addresses = netlink.addresses(&client).await.expect("addresses");
            assert!(
                addresses.contains(&ipnet::IpNet::V4(lease.address)),
                "{addresses:?}"
            );
            let routes = netlink.routes().await.expect("routes");
            assert!(
                routes
                    .iter()
                    .any(|r| r.to.prefix_len() == 0 && r.via == Some("10.77.0.1".parse().unwrap())),
                "default route via the DHCP router: {routes:?}"
            );
            // RENEWING (unicast to the server) and REBINDING (broadcast) both extend.
            for how in [Extension::Renew, Extension::Rebind] {
                let extended =
                    cairn_net::dhcp::extend(&client, &lease, how, Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|e| panic!("{how:?}: {e}"));
                assert_eq!(extended.address, lease.address, "{how:?}");
            }
            lease
        })
        .expect("client namespace");
    // No server any more: a lease whose T1, T2 and end come within seconds is renewed
    // and rebound in vain, then given up; the reconciler takes its address away.
    drop(server);
    client_ns
        .run_async(|| async {
            let netlink = Netlink::connect().expect("netlink");
            let client = netlink.link_named("cairn0").await.unwrap().unwrap();
            let short = Lease {
                lifetime: Duration::from_secs(3),
                renew_after: Duration::from_secs(1),
                rebind_after: Duration::from_secs(2),
                obtained: std::time::Instant::now(),
                ..lease.clone()
            };
            let board = LeaseBoard::default();
            let stop = tokio_util::sync::CancellationToken::new();
            let keeper = tokio::spawn(cairn_net::dhcp::maintain(
                client.clone(),
                Some(short),
                board.clone(),
                stop.clone(),
            ));
            board.changed().await;
            assert!(board.leases().contains_key("cairn0"), "posted");
            let mut reconciler = Reconciler::new(netlink.clone());
            let status = reconciler.pass(&lease_layer(&board.leases())).await;
            assert!(status.problems.is_empty(), "{:?}", status.problems);
            tokio::time::timeout(Duration::from_secs(20), board.changed())
                .await
                .expect("the lease given up at its end");
            assert!(board.leases().is_empty(), "{board:?}");
            reconciler.pass(&lease_layer(&board.leases())).await;
            let addresses = netlink.addresses(&client).await.unwrap();
            assert!(
                !addresses.contains(&ipnet::IpNet::V4(lease.address)),
                "{addresses:?}"
            );
            let routes = netlink.routes().await.unwrap();
            assert!(
                !routes
                    .iter()
                    .any(|r| r.to.prefix_len() == 0 && r.link_index == Some(client.index)),
                "{routes:?}"
            );
            stop.cancel();
            keeper.await.unwrap();
        })
        .expect("client namespace");
}

/// Kills the DHCP server however the test ends.
struct ServerGuard(std::process::Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn link_found_by_mac_and_missing_link_named_in_error() {
    let ns = namespace();
    ns.run_async(|| async {
        let netlink = Netlink::connect().expect("netlink");
        netlink
            .add_veth("cairn0", "cairn1")
            .await
            .expect("veth pair");
        let links = netlink.links().await.expect("links");
        let peer = links.iter().find(|l| l.name == "cairn1").expect("peer");
        let by_mac = interfaces::wait_for_link(
            &netlink,
            &LinkSelector::Mac(peer.mac.expect("mac")),
            Duration::ZERO,
        )
        .await
        .expect("found by mac");
        assert_eq!(by_mac.name, "cairn1");

        let err = interfaces::wait_for_link(
            &netlink,
            &LinkSelector::Name("eth7".into()),
            Duration::from_millis(100),
        )
        .await
        .expect_err("no such link");
        let text = err.to_string();
        assert!(text.contains("eth7") && text.contains("cairn0"), "{text}");
    })
    .expect("inside namespace");
}

#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn new_namespace_has_loopback_up() {
    let ns = namespace();
    let links = ns
        .run_async(|| async {
            let netlink = Netlink::connect().expect("netlink");
            netlink.links().await.expect("links")
        })
        .expect("inside namespace");
    assert!(links.iter().any(|l| l.name == "lo" && l.up), "{links:?}");
}
