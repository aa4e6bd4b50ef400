//! Host tier (needs root): the network reconciler in a network namespace the test
//! creates: converging from nothing, a pass that has nothing to do changing nothing,
//! drift (an address, a route, the link's state) repaired as soon as netlink announces
//! it, a spec change removing only what the reconciler had put in place, and a spec
//! naming a missing link reported by its YAML path.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use cairn_api::machine_api::NetworkStatus;
use cairn_api::machine_config::{Interface, LinkKind, LinkSelector, Route};
use cairn_net::Netlink;
use cairn_net::monitor::ChangeMonitor;
use cairn_net::netns::NetNamespace;
use cairn_net::reconcile::{Reconciler, SpecItem, config_layer};
use ipnet::IpNet;
use tokio::sync::watch;

fn spec() -> Vec<SpecItem> {
    config_layer(&interfaces())
}

fn interfaces() -> Vec<Interface> {
    vec![Interface {
        selector: LinkSelector::Name("cn0".into()),
        kind: LinkKind::Existing,
        addresses: vec![
            "10.9.0.2/24".parse().unwrap(),
            "fd09::2/64".parse().unwrap(),
        ],
        mtu: Some(1400),
        dhcp: false,
        routes: vec![Route {
            to: "10.10.0.0/16".parse().unwrap(),
            via: Some("10.9.0.1".parse().unwrap()),
        }],
    }]
}

fn has_address(status: &NetworkStatus, address: &str) -> bool {
    status
        .addresses
        .iter()
        .any(|a| a.link == "cn0" && a.address == address && a.configured)
}

fn has_route(status: &NetworkStatus, to: &str) -> bool {
    status.routes.iter().any(|r| r.to == to && r.configured)
}

fn converged(status: &NetworkStatus) -> bool {
    let link = status.links.iter().find(|l| l.name == "cn0");
    link.is_some_and(|l| l.up && l.mtu == Some(1400) && l.configured)
        && has_address(status, "10.9.0.2/24")
        && has_address(status, "fd09::2/64")
        && has_route(status, "10.10.0.0/16")
}

#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn the_reconciler_converges_repairs_drift_and_removes_only_its_own() {
    let ns = NetNamespace::create().expect("a network namespace (run as root)");
    ns.run_async(|| async {
        let netlink = Netlink::connect().unwrap();
        netlink.add_veth("cn0", "cn1").await.unwrap();
        let peer = netlink.link_named("cn1").await.unwrap().unwrap();
        netlink.set_up(&peer).await.unwrap();

        // From nothing, in one pass; a second pass has nothing to do.
        let mut reconciler = Reconciler::new(netlink.clone());
        let first = reconciler.pass(&spec()).await;
        assert!(converged(&first), "{first:#?}");
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        let second = reconciler.pass(&spec()).await;
        assert_eq!((second.passes, second.repairs), (2, 0), "nothing to repair");

        // Run it as the node does: a pass on every change.
        let (spec_tx, mut spec_rx) = watch::channel(spec());
        let (status_tx, mut status_rx) = watch::channel(second);
        let mut changes = ChangeMonitor::subscribe().unwrap();
        let follower = tokio::spawn(async move {
            loop {
                let spec = spec_rx.borrow_and_update().clone();
                let status = reconciler.pass(&spec).await;
                status_tx.send_replace(status);
                tokio::select! {
                    _ = spec_rx.changed() => {}
                    changed = changes.changed() => if !changed { return },
                }
            }
        });
        let link = link_now(&netlink).await;
        let mut repairs = 0;
        netlink
            .del_address(&link, "10.9.0.2/24".parse().unwrap())
            .await
            .unwrap();
        repairs = repaired(&mut status_rx, repairs, "an address removed by hand").await;
        netlink
            .del_route(
                &link,
                "10.10.0.0/16".parse().unwrap(),
                Some("10.9.0.1".parse().unwrap()),
            )
            .await
            .unwrap();
        repairs = repaired(&mut status_rx, repairs, "a route removed by hand").await;
        // Down, the link also loses its IPv6 address and the route through it.
        netlink.set_down(&link).await.unwrap();
        repaired(&mut status_rx, repairs, "the link set down").await;

        // The spec drops the route and the IPv6 address: those go, a route somebody
        // else added stays.
        netlink
            .add_route(
                &link_now(&netlink).await,
                "10.11.0.0/16".parse().unwrap(),
                None,
            )
            .await
            .unwrap();
        let mut smaller = interfaces();
        smaller[0].routes.clear();
        smaller[0].addresses.truncate(1);
        // And a second interface that does not exist is reported by its path.
        smaller.push(Interface {
            selector: LinkSelector::Name("nope0".into()),
            kind: LinkKind::Existing,
            addresses: vec![],
            mtu: None,
            dhcp: false,
            routes: vec![],
        });
        status_rx.borrow_and_update();
        spec_tx.send_replace(config_layer(&smaller));
        let status = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                status_rx.changed().await.unwrap();
                let status = status_rx.borrow_and_update().clone();
                if !status.routes.iter().any(|r| r.to == "10.10.0.0/16")
                    && !status.problems.is_empty()
                {
                    return status;
                }
            }
        })
        .await
        .expect("the smaller spec applied");
        let addresses = netlink.addresses(&link_now(&netlink).await).await.unwrap();
        assert!(addresses.contains(&"10.9.0.2/24".parse::<IpNet>().unwrap()));
        assert!(!addresses.contains(&"fd09::2/64".parse::<IpNet>().unwrap()));
        assert!(
            status
                .routes
                .iter()
                .any(|r| r.to == "10.11.0.0/16" && !r.configured)
        );
        assert_eq!(
            status.problems,
            ["machine.network.interfaces[1] (nope0): no link matches"]
        );
        follower.abort();
    })
    .unwrap();
}

/// Waits until the status shows a repair after `before` repairs and a converged
/// network; the repairs counted then. The time it took is printed, never asserted.
async fn repaired(status_rx: &mut watch::Receiver<NetworkStatus>, before: u64, what: &str) -> u64 {
    let broken_at = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            status_rx.changed().await.unwrap();
            let status = status_rx.borrow_and_update().clone();
            if status.repairs > before && converged(&status) {
                return status;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not repaired"));
    eprintln!("{what}: repaired after {:?}", broken_at.elapsed());
    status.repairs
}

/// `cn0` as it is now.
async fn link_now(netlink: &Netlink) -> cairn_net::Link {
    netlink.link_named("cn0").await.unwrap().unwrap()
}

fn bridge_over(ports: &[&str]) -> Interface {
    Interface {
        selector: LinkSelector::Name("cbr0".into()),
        kind: LinkKind::Bridge {
            ports: ports.iter().map(|p| (*p).to_owned()).collect(),
            stp: false,
        },
        addresses: vec!["10.20.0.2/24".parse().unwrap()],
        mtu: None,
        dhcp: false,
        routes: vec![],
    }
}

fn link<'a>(status: &'a NetworkStatus, name: &str) -> Option<&'a cairn_api::machine_api::LinkInfo> {
    status.links.iter().find(|l| l.name == name)
}

/// A bridge from the config is created with its ports and address, a port taken out
/// by hand is put back, the bridge deleted by hand comes back, a port dropped from the
/// config is released, and a config without the bridge deletes it (it carries
/// Cairn's alias, so even a reconciler that never created it knows it as Cairn's).
/// Bonds and VLANs need kernel modules this host does not have: the QEMU scenario
/// `bonds_and_vlans_are_made_repaired_and_removed` covers them.
#[test]
#[ignore = "needs root (network namespaces); run by cargo xtask test"]
fn a_bridge_from_the_config_is_created_repaired_and_removed() {
    let ns = NetNamespace::create().expect("a network namespace (run as root)");
    ns.run_async(|| async {
        let netlink = Netlink::connect().unwrap();
        for (a, b) in [("cp0", "cq0"), ("cp1", "cq1")] {
            netlink.add_veth(a, b).await.unwrap();
        }
        let mut reconciler = Reconciler::new(netlink.clone());
        let status = reconciler
            .pass(&config_layer(&[bridge_over(&["cp0", "cp1"])]))
            .await;
        assert!(status.problems.is_empty(), "{:?}", status.problems);
        let bridge = link(&status, "cbr0").expect("the bridge exists");
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert!(bridge.up && bridge.configured);
        for port in ["cp0", "cp1"] {
            let port = link(&status, port).unwrap();
            assert_eq!(port.controller.as_deref(), Some("cbr0"), "{port:?}");
            assert!(port.up, "{port:?}");
        }
        assert!(
            status
                .addresses
                .iter()
                .any(|a| a.link == "cbr0" && a.address == "10.20.0.2/24" && a.configured)
        );
        let again = reconciler
            .pass(&config_layer(&[bridge_over(&["cp0", "cp1"])]))
            .await;
        assert_eq!(again.repairs, 0, "a converged bridge needs nothing");

        // A port taken out by hand is put back.
        let cp1 = netlink.link_named("cp1").await.unwrap().unwrap();
        netlink.release_port(&cp1).await.unwrap();
        let status = reconciler
            .pass(&config_layer(&[bridge_over(&["cp0", "cp1"])]))
            .await;
        assert_eq!(
            link(&status, "cp1").unwrap().controller.as_deref(),
            Some("cbr0")
        );
        assert!(status.repairs > 0);

        // The bridge deleted by hand comes back, with its ports and address.
        let bridge = netlink.link_named("cbr0").await.unwrap().unwrap();
        netlink.delete_link(&bridge).await.unwrap();
        let status = reconciler
            .pass(&config_layer(&[bridge_over(&["cp0", "cp1"])]))
            .await;
        assert!(status.problems.is_empty(), "{:?}", status.problems);
        assert_eq!(
            link(&status, "cp0").unwrap().controller.as_deref(),
            Some("cbr0")
        );
        assert!(
            status
                .addresses
                .iter()
                .any(|a| a.link == "cbr0" && a.address == "10.20.0.2/24")
        );

        // A port the config no longer names is released.
        let status = reconciler
            .pass(&config_layer(&[bridge_over(&["cp0"])]))
            .await;
        assert_eq!(link(&status, "cp1").unwrap().controller, None);
        assert_eq!(
            link(&status, "cp0").unwrap().controller.as_deref(),
            Some("cbr0")
        );

        // A fresh reconciler (a restarted node) with a config without the bridge
        // deletes it: the alias marks it as Cairn's. The veths, not Cairn's, stay.
        let mut fresh = Reconciler::new(netlink.clone());
        let status = fresh.pass(&[]).await;
        assert!(link(&status, "cbr0").is_none(), "{:?}", status.links);
        assert!(link(&status, "cp0").is_some_and(|l| l.controller.is_none()));

        // A link of somebody else's with the bridge's name is reported, not replaced.
        netlink.add_veth("cbr0", "cbr1").await.unwrap();
        let status = fresh.pass(&config_layer(&[bridge_over(&["cp0"])])).await;
        assert!(
            status
                .problems
                .iter()
                .any(|p| p.contains("cbr0 exists but is a veth link, not a bridge")),
            "{:?}",
            status.problems
        );
        assert_eq!(link(&status, "cbr0").unwrap().kind.as_deref(), Some("veth"));
    })
    .unwrap();
}
