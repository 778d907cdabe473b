//! Fleet rebalancing: which tenants to move so that the servers of a `postgres` fleet hold
//! about the same number of tenants and bytes of tenant databases.

use std::collections::BTreeMap;

/// A tenant as the plan sees it: where it is and how big its database is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedTenant {
    /// The tenant's id.
    pub tenant_id: String,
    /// The fleet server it is on.
    pub server: String,
    /// `pg_database_size` of its database, in bytes.
    pub bytes: u64,
}

/// One server's share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// ACTIVE tenants on it.
    pub tenants: u32,
    /// Bytes of their databases.
    pub bytes: u64,
}

/// A move the plan proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedMove {
    /// The tenant to move.
    pub tenant_id: String,
    /// From this server.
    pub from: String,
    /// To this one.
    pub to: String,
    /// Its database's size, in bytes.
    pub bytes: u64,
}

/// The loads of `servers` (every fleet server, empty ones too) holding `tenants`; a
/// tenant on a server not among them is not counted.
pub fn loads(servers: &[String], tenants: &[PlacedTenant]) -> BTreeMap<String, Load> {
    let mut loads: BTreeMap<String, Load> = servers
        .iter()
        .map(|server| (server.clone(), Load::default()))
        .collect();
    for tenant in tenants {
        if let Some(load) = loads.get_mut(&tenant.server) {
            load.tenants += 1;
            load.bytes += tenant.bytes;
        }
    }
    loads
}

/// At most `max_moves` moves that even out `tenants` over `servers`: each takes a tenant
/// from the server with the highest load to the one with the lowest, where a server's load
/// is its tenant count over the mean plus its bytes over the mean (both shares count
/// alike), and is made only if it lowers the higher of the two servers' loads. Among the
/// tenants that qualify, the one leaving the two closest is moved (ties: the smaller
/// database, then the tenant id). Deterministic.
pub fn plan(servers: &[String], tenants: &[PlacedTenant], max_moves: usize) -> Vec<PlannedMove> {
    let mut placed: Vec<PlacedTenant> = tenants
        .iter()
        .filter(|tenant| servers.contains(&tenant.server))
        .cloned()
        .collect();
    placed.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    let mut loads = loads(servers, &placed);
    if loads.len() < 2 || placed.is_empty() {
        return Vec::new();
    }
    let n = loads.len() as f64;
    let mean_count = placed.len() as f64 / n;
    let mean_bytes = (placed.iter().map(|t| t.bytes).sum::<u64>() as f64 / n).max(1.0);
    let score = |load: &Load| f64::from(load.tenants) / mean_count + load.bytes as f64 / mean_bytes;
    let mut moved: Vec<String> = Vec::new();
    let mut moves = Vec::new();
    while moves.len() < max_moves {
        let by_score = |a: &(&String, &Load), b: &(&String, &Load)| {
            score(a.1).total_cmp(&score(b.1)).then(b.0.cmp(a.0))
        };
        let (Some((high, high_load)), Some((low, low_load))) =
            (loads.iter().max_by(by_score), loads.iter().min_by(by_score))
        else {
            break;
        };
        if high == low {
            break;
        }
        let (high, low) = (high.clone(), low.clone());
        let (high_load, low_load) = (high_load.clone(), low_load.clone());
        let before = score(&high_load);
        let best = placed
            .iter()
            .filter(|t| t.server == high && !moved.contains(&t.tenant_id))
            .filter_map(|t| {
                let from = Load {
                    tenants: high_load.tenants - 1,
                    bytes: high_load.bytes - t.bytes,
                };
                let to = Load {
                    tenants: low_load.tenants + 1,
                    bytes: low_load.bytes + t.bytes,
                };
                let worst = score(&from).max(score(&to));
                (worst < before - 1e-9).then(|| ((score(&from) - score(&to)).abs(), t))
            })
            .min_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(a.1.bytes.cmp(&b.1.bytes))
                    .then(a.1.tenant_id.cmp(&b.1.tenant_id))
            })
            .map(|(_, t)| t.clone());
        let Some(tenant) = best else {
            break;
        };
        if let Some(load) = loads.get_mut(&high) {
            load.tenants -= 1;
            load.bytes -= tenant.bytes;
        }
        if let Some(load) = loads.get_mut(&low) {
            load.tenants += 1;
            load.bytes += tenant.bytes;
        }
        if let Some(t) = placed.iter_mut().find(|t| t.tenant_id == tenant.tenant_id) {
            t.server = low.clone();
        }
        moved.push(tenant.tenant_id.clone());
        moves.push(PlannedMove {
            tenant_id: tenant.tenant_id,
            from: high,
            to: low,
            bytes: tenant.bytes,
        });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, server: &str, bytes: u64) -> PlacedTenant {
        PlacedTenant {
            tenant_id: id.into(),
            server: server.into(),
            bytes,
        }
    }

    fn servers(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_uneven_fleet_is_evened_out_by_count() {
        let tenants: Vec<_> = (0..6).map(|i| tenant(&format!("t{i}"), "a", 100)).collect();
        let moves = plan(&servers(&["a", "b", "c"]), &tenants, 10);
        assert_eq!(moves.len(), 4, "{moves:?}");
        let mut after = tenants.clone();
        for m in &moves {
            after
                .iter_mut()
                .find(|t| t.tenant_id == m.tenant_id)
                .unwrap()
                .server = m.to.clone();
        }
        let loads = loads(&servers(&["a", "b", "c"]), &after);
        assert!(loads.values().all(|l| l.tenants == 2), "{loads:?}");
    }

    #[test]
    fn bytes_count_too_and_a_balanced_fleet_is_left_alone() {
        // Same counts, one server holds the big databases: the plan swaps size over.
        let tenants = vec![
            tenant("big1", "a", 1000),
            tenant("big2", "a", 1000),
            tenant("small1", "b", 10),
            tenant("small2", "b", 10),
        ];
        let moves = plan(&servers(&["a", "b"]), &tenants, 10);
        assert_eq!(
            moves.first().map(|m| m.from.as_str()),
            Some("a"),
            "{moves:?}"
        );
        let balanced = vec![tenant("x", "a", 10), tenant("y", "b", 10)];
        assert!(plan(&servers(&["a", "b"]), &balanced, 10).is_empty());
        assert!(plan(&servers(&["a"]), &tenants, 10).is_empty());
    }

    #[test]
    fn the_plan_stops_at_max_moves() {
        let tenants: Vec<_> = (0..10).map(|i| tenant(&format!("t{i}"), "a", 1)).collect();
        assert_eq!(plan(&servers(&["a", "b"]), &tenants, 3).len(), 3);
    }
}
