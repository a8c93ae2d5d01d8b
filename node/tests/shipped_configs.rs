//! The configurations shipped in cluster-config/ load, pass every check, and describe the cluster
//! the README promises: seven replicas over three sites, 3 + 3 + 1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tally_node::NodeConfig;

fn configs(directory: &str) -> Vec<NodeConfig> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(directory);
    let mut paths: Vec<_> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|path| NodeConfig::load(path).unwrap_or_else(|error| panic!("{error}"))).collect()
}

#[test]
fn the_local_cluster_is_seven_replicas_over_three_sites() {
    let configs = configs("cluster-config/local");
    assert_eq!(configs.len(), 7);
    let ids: BTreeSet<u64> = configs.iter().map(|config| config.node_id).collect();
    assert_eq!(ids, (1..=7).collect());
    let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
    for config in &configs {
        *per_site.entry(config.site.as_str()).or_default() += 1;
        assert_eq!(config.initial_members, configs[0].initial_members, "every replica lists the same members");
        let member = config.initial_members.iter().find(|member| member.id == config.node_id).unwrap();
        assert_eq!(member.site, config.site);
    }
    assert_eq!(per_site.values().copied().collect::<Vec<_>>(), [3, 3, 1]);
    let ports: BTreeSet<u16> = configs
        .iter()
        .flat_map(|config| [config.listen_address.port(), config.metrics_address.unwrap().port()])
        .collect();
    assert_eq!(ports.len(), 14, "no port is used twice");
    assert!(ports.iter().all(|port| *port < 32_768), "ports stay below the kernel's outgoing range");
    let directories: BTreeSet<_> = configs.iter().map(|config| config.data_directory.clone()).collect();
    assert_eq!(directories.len(), 7);
}

#[test]
fn the_annotated_example_for_real_hosts_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/hosts-example.toml");
    let config = NodeConfig::load(&path).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.initial_members.len(), 7);
}
