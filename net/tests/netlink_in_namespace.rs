//! Host tier (needs root): applies interface specs to real links inside a network
//! namespace the test creates, and reads the result back from the kernel.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use cairn_api::machine_config::{Interface, LinkSelector, Route};
use cairn_net::netns::NetNamespace;
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
            addresses: vec![
                "10.9.0.2/24".parse().unwrap(),
                "fd09::2/64".parse().unwrap(),
            ],
            mtu: Some(1400),
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
    })
    .expect("inside namespace");
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
