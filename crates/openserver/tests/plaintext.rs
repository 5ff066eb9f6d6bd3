//! Trap 4 of issue 15: the library, like the CLI, serves plaintext only on loopback unless
//! the application opts in by a `danger`-named call.

use openserver::server::{Server, ServerConfig};
use std::io::ErrorKind;

fn listening_on(addr: &str) -> ServerConfig {
    ServerConfig {
        listen: addr.parse().unwrap(),
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn plaintext_off_loopback_is_refused_with_what_to_do() {
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        let Err(e) = Server::builder(listening_on(addr)).hello().bind().await else {
            panic!("{addr}: plaintext bound off loopback");
        };
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{addr}: {e}");
        let text = e.to_string();
        assert!(text.contains("refusing to serve plaintext"), "{text}");
        assert!(
            text.contains(".danger_allow_plaintext_non_loopback()"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn loopback_binds_and_the_danger_opt_in_passes_the_check() {
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        match Server::builder(listening_on(addr)).bind().await {
            Ok(server) => assert!(server.local_addr().ip().is_loopback()),
            // A machine without IPv6 loopback cannot bind [::1]; that is not the rule.
            Err(e) => assert_ne!(e.kind(), ErrorKind::InvalidInput, "{addr}: {e}"),
        }
    }
    // 192.0.2.1 (TEST-NET-1) is on no interface: past the rule, the bind itself fails, so the
    // test opens nothing off loopback.
    let Err(e) = Server::builder(listening_on("192.0.2.1:0"))
        .danger_allow_plaintext_non_loopback()
        .bind()
        .await
    else {
        panic!("bound 192.0.2.1");
    };
    assert_eq!(e.kind(), ErrorKind::AddrNotAvailable, "{e}");
}
