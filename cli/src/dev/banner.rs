//! What `silo dev` prints once everything answers: endpoints, tokens, calls to paste, and
//! last the readiness line (`silo dev is ready`) scripts and tests wait for.

use std::{net::SocketAddr, path::Path};

pub struct Banner<'a> {
    pub router: SocketAddr,
    pub router_metrics: SocketAddr,
    pub control_plane: SocketAddr,
    pub control_plane_metrics: SocketAddr,
    pub postgres_dsn: String,
    pub postgres_data: &'a Path,
    pub postgres_fallback: Option<&'a str>,
    /// The dev CA clients trust with `--tls`; `None`: plaintext.
    pub ca_file: Option<&'a Path>,
    pub admin_token: &'a str,
    /// (tenant, token with its `tenant_id` claim)
    pub tenant_tokens: &'a [(String, String)],
}

fn line(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<23}{value}");
}

pub fn print(banner: &Banner<'_>) {
    println!();
    line("router", banner.router);
    line(
        "router metrics",
        format!("http://{}/metrics", banner.router_metrics),
    );
    line("control plane", banner.control_plane);
    line(
        "control plane metrics",
        format!("http://{}/metrics", banner.control_plane_metrics),
    );
    line(
        "PostgreSQL",
        format!(
            "{}  (data in {})",
            banner.postgres_dsn,
            banner.postgres_data.display()
        ),
    );
    if let Some(reason) = banner.postgres_fallback {
        line("", format!("(not under the data dir: {reason})"));
    }
    if let Some(ca) = banner.ca_file {
        line("TLS CA", ca.display());
    }
    let (grpcurl_tls, scheme, siloctl_ca) = match banner.ca_file {
        Some(ca) => (
            format!("-cacert {}", ca.display()),
            "https",
            format!(" SILO_CA_FILE={}", ca.display()),
        ),
        None => ("-plaintext".to_owned(), "http", String::new()),
    };
    println!();
    line("admin token", banner.admin_token);
    for (tenant, token) in banner.tenant_tokens {
        line(&format!("token {tenant}"), token);
    }
    if let Some((tenant, token)) = banner.tenant_tokens.first() {
        println!();
        println!("  try it, as {tenant} (grpcurl finds the API by reflection):");
        println!();
        println!("    grpcurl {grpcurl_tls} -H 'authorization: Bearer {token}' \\");
        println!(
            "      -d '{{\"statement\": {{\"sql\": \"select current_database(), now()\"}}}}' \\"
        );
        println!("      {} silo.router.v1.Router/Query", banner.router);
        println!();
        println!("  or with siloctl (scripts/siloctl builds it once, then runs it):");
        println!();
        println!(
            "    SILO_ROUTER={scheme}://{}{siloctl_ca} SILO_TOKEN='{token}' \\",
            banner.router
        );
        println!(
            "      scripts/siloctl query --tenant {tenant} 'select current_database(), now()'"
        );
    }
    println!();
    println!(
        "  tenants: SILO_CONTROL_PLANE={scheme}://{}{siloctl_ca} SILO_ADMIN_TOKEN=<admin token> scripts/siloctl tenants list",
        banner.control_plane
    );
    println!();
    println!("silo dev is ready; Ctrl-C stops everything");
}
